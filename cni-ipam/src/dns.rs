//! DNS settings for the result, read from a resolv.conf file.

use std::path::Path;

use cni_core::Dns;

use crate::error::IpamError;

pub fn read_resolv_conf(path: &Path) -> Result<Dns, IpamError> {
    let text = std::fs::read_to_string(path).map_err(|source| IpamError::ResolvConf {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse(&text))
}

fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let values: Vec<String> = words.map(str::to_string).collect();
        match keyword {
            "nameserver" => dns.nameservers.extend(values.into_iter().take(1)),
            "domain" => dns.domain = values.into_iter().next(),
            "search" => dns.search = values,
            "options" => dns.options.extend(values),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_keywords() {
        let dns = parse(
            "# generated\nnameserver 10.96.0.10\nnameserver fd00::10 # v6\ndomain cluster.local\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\nsortlist x\n",
        );
        assert_eq!(dns.nameservers, ["10.96.0.10", "fd00::10"]);
        assert_eq!(dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(
            dns.search,
            ["default.svc.cluster.local", "svc.cluster.local"]
        );
        assert_eq!(dns.options, ["ndots:5", "edns0"]);
    }
}
