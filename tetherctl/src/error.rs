//! What tetherctl can fail with before it has a status to show, and the exit code of each.

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(String),
    #[error("no node named {0}")]
    NoSuchNode(String),
    #[error("no pod {0}")]
    NoSuchPod(String),
    #[error("no claim, PersistentVolume or tether-csi volume {0}")]
    NoSuchVolume(String),
}

/// Exit codes: 0 healthy, 1 something is wrong (the status says what), 2 no status at all.
pub const EXIT_UNHEALTHY: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
