//! `tether-csi`: the CSI driver process.

use clap::Parser;
use tether_csi::server::{serve, Args};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tether_observe::logging::init(
        args.log_format,
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-csi: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tether-csi: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
