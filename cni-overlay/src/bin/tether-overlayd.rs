//! `tether-overlayd`: the Tether overlay node daemon.

use clap::Parser;
use cni_overlay::daemon::{self, config::Args};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tether_observe::logging::init(
        args.log_format,
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-overlayd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e = cni_core::error::chain(&e);
            tracing::error!("{e}");
            eprintln!("tether-overlayd: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
