//! A gRPC channel to a CSI driver's unix socket (for tether-csictl, tests and benchmarks).

use std::path::PathBuf;

use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to `endpoint`: `unix:///path`, `unix:/path` or a plain path.
pub async fn channel(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    let path = PathBuf::from(
        endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.strip_prefix("unix:"))
            .unwrap_or(endpoint),
    );
    // The URI is required by the API and never used: the connector dials the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
