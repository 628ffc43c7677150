//! A test CA and certificates made with openssl: a server certificate for 127.0.0.1 and
//! localhost, a client certificate of the same CA, and one of another CA.

use std::path::PathBuf;

use crate::run_ok;

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed; and a client
/// certificate of another CA.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Default for Certs {
    fn default() -> Certs {
        Certs::new()
    }
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |name: &str| d.join(name).to_str().unwrap().to_string();
        for ca in ["ca", "other-ca"] {
            run_ok(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=tether test {ca}"),
                    "-keyout",
                    &p(&format!("{ca}.key")),
                    "-out",
                    &p(&format!("{ca}.crt")),
                ],
            );
        }
        // X.509 v3 (rustls accepts nothing older): the extensions make it so.
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("stranger", "other-ca", "client.ext"),
        ] {
            run_ok(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &p(&format!("{name}.key")),
                    "-out",
                    &p(&format!("{name}.csr")),
                ],
            );
            let mut args = vec![
                "x509".to_string(),
                "-req".into(),
                "-days".into(),
                "2".into(),
                "-in".into(),
                p(&format!("{name}.csr")),
                "-CA".into(),
                p(&format!("{ca}.crt")),
                "-CAkey".into(),
                p(&format!("{ca}.key")),
                "-CAcreateserial".into(),
                "-out".into(),
                p(&format!("{name}.crt")),
            ];
            args.extend(["-extfile".into(), p(ext)]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ok("openssl", &args);
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}
