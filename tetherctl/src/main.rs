//! `tetherctl`: what is wrong on a Tether cluster, from wherever a kubeconfig works. Installed
//! on the PATH as `kubectl-tether` it is also `kubectl tether ...`.

mod cluster;
mod diagnose;
mod error;
mod prom;
mod status;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use error::{CtlError, EXIT_ERROR, EXIT_UNHEALTHY};

#[derive(Debug, Parser)]
#[command(
    name = "tetherctl",
    version,
    about = "What is wrong on a Tether cluster"
)]
struct Args {
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every node (or one): the Node, tether-overlayd (readiness, peers, direct and VXLAN
    /// routes, refused entries, br_netfilter), tether-netpol, tether-csi; then the problems.
    /// Exits 1 when there is any.
    Status {
        /// Only this node.
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Why POD cannot reach POD2: each pod's address and attachment on its node, the route and
    /// VXLAN entries each node's kernel holds toward the other pod, the MTU along the way, the
    /// NetworkPolicies' verdict for the port, the Services and hostPorts leading to POD2; then
    /// the problems. With one pod: its attachment and the policies that isolate it. Exits 1
    /// when there is any problem.
    Diagnose {
        /// The pod: NAMESPACE/NAME, or NAME in --namespace.
        pod: String,
        /// The pod it should reach.
        pod2: Option<String>,
        /// The namespace of pods given by name alone.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The port on POD2 to judge the policies for (default: every port POD2 declares).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum, default_value_t = L4::Tcp)]
        protocol: L4,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Where a volume lives (server, share, directory, layout), its claim and capacity, what
    /// limits it, the pods and nodes using it with kubelet's usage figures, and its snapshots.
    /// Exits 1 when anything is wrong.
    Volume {
        /// NAMESPACE/CLAIM, a claim in --namespace, a PersistentVolume's name, or a volume id.
        volume: String,
        /// The namespace of a claim given by name alone.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A transport protocol, as NetworkPolicies name them.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum L4 {
    Tcp,
    Udp,
    Sctp,
}

impl L4 {
    fn model(self) -> tether_netpol::model::Protocol {
        use tether_netpol::model::Protocol;
        match self {
            L4::Tcp => Protocol::Tcp,
            L4::Udp => Protocol::Udp,
            L4::Sctp => Protocol::Sctp,
        }
    }
}

fn print<T: serde::Serialize>(output: Output, value: &T, table: impl FnOnce(&T) -> String) {
    match output {
        Output::Table => print!("{}", table(value)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
    }
}

async fn run(args: Args) -> Result<bool, CtlError> {
    let cluster = cluster::Cluster::connect(args.kubeconfig.as_deref()).await?;
    match args.command {
        Command::Status { node, output } => {
            let status = status::collect(&cluster, node.as_deref()).await?;
            print(output, &status, status::render);
            Ok(status.healthy)
        }
        Command::Diagnose {
            pod,
            pod2,
            namespace,
            port,
            protocol,
            output,
        } => {
            let question = diagnose::Question {
                from: diagnose::PodRef::parse(&pod, &namespace),
                to: pod2.map(|p| diagnose::PodRef::parse(&p, &namespace)),
                port: port.map(|p| (protocol.model(), p)),
            };
            let diagnosis = diagnose::diagnose(&cluster, &question).await?;
            print(output, &diagnosis, diagnose::render);
            Ok(diagnosis.problems.is_empty())
        }
        Command::Volume {
            volume,
            namespace,
            output,
        } => {
            let report = volume::describe(&cluster, &volume, &namespace).await?;
            print(output, &report, volume::render);
            Ok(report.problems.is_empty())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tetherctl: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_UNHEALTHY),
        Err(e) => {
            eprintln!("tetherctl: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
