//! One plugin invocation: the verb, the `CNI_*` environment and the configuration from stdin.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::args::{ArgsError, CniArgs};
use crate::config::{self, NetConf};
use crate::error::{CniError, Code};
use crate::result::CniResult;
use crate::version::{UnsupportedVersion, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Verbs that act on one attachment and so need a container and an interface name.
    fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// What went wrong before a plugin's own code ran.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    #[error("CNI_COMMAND {0:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION")]
    UnknownCommand(String),
    #[error("required environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("CNI_CONTAINERID {0:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.', '-'")]
    InvalidContainerId(String),
    #[error("CNI_CONTAINERID is {0} bytes long; Tether's limit is {max} bytes (lease files and interface aliases must hold it)", max = config::MAX_CONTAINER_ID)]
    ContainerIdTooLong(usize),
    #[error(
        "CNI_IFNAME {0:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace)"
    )]
    InvalidIfname(String),
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error("reading the network configuration from stdin failed")]
    ReadStdin(#[source] std::io::Error),
    #[error("the network configuration on stdin is not valid JSON")]
    Json(#[source] serde_json::Error),
    #[error("the network configuration is invalid")]
    Config(#[source] serde_json::Error),
    #[error("network name {0:?} is invalid: it must start with a letter or digit and hold only letters, digits, '_', '.', '-'")]
    InvalidNetworkName(String),
    #[error("the network name is {0} bytes long; Tether's limit is {max} bytes (it names directories and interface aliases)", max = config::MAX_NETWORK_NAME)]
    NetworkNameTooLong(usize),
    #[error(transparent)]
    Version(#[from] UnsupportedVersion),
    #[error("{command} is not defined for CNI version {version} (needs {needs} or later)")]
    VerbNotInVersion {
        command: &'static str,
        version: Version,
        needs: &'static str,
    },
    #[error("prevResult cannot be parsed")]
    PrevResult(#[source] serde_json::Error),
}

impl RequestError {
    /// Whether a DEL refused for this reason has nothing to undo: no ADD with such a request
    /// could have made anything, so DEL succeeds (and the runtime stops retrying).
    pub fn nothing_to_undo(&self) -> bool {
        matches!(
            self,
            RequestError::ContainerIdTooLong(_)
                | RequestError::InvalidContainerId(_)
                | RequestError::NetworkNameTooLong(_)
                | RequestError::InvalidNetworkName(_)
        )
    }
}

impl CniError for RequestError {
    fn code(&self) -> u32 {
        let code = match self {
            RequestError::MissingCommand
            | RequestError::UnknownCommand(_)
            | RequestError::MissingEnv(_)
            | RequestError::InvalidContainerId(_)
            | RequestError::ContainerIdTooLong(_)
            | RequestError::InvalidIfname(_)
            | RequestError::Args(_) => Code::InvalidEnvironment,
            RequestError::ReadStdin(_) => Code::Io,
            RequestError::Json(_) | RequestError::PrevResult(_) => Code::Decode,
            RequestError::Config(_)
            | RequestError::InvalidNetworkName(_)
            | RequestError::NetworkNameTooLong(_) => Code::InvalidConfig,
            RequestError::Version(_) | RequestError::VerbNotInVersion { .. } => {
                Code::IncompatibleVersion
            }
        };
        code.into()
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub command: Command,
    /// Empty for GC and STATUS.
    pub container_id: String,
    /// `None` when the runtime passed none (allowed for DEL, GC, STATUS).
    pub netns: Option<PathBuf>,
    /// Empty for GC and STATUS.
    pub ifname: String,
    pub args: CniArgs,
    pub cni_path: Vec<PathBuf>,
    pub version: Version,
    pub config: NetConf,
    /// The whole configuration object as received, unknown keys included.
    pub raw_config: Map<String, Value>,
    pub prev_result: Option<CniResult>,
}

impl Request {
    /// Builds a request for a verb other than VERSION from an environment lookup and stdin.
    pub fn from_parts(
        command: Command,
        env: &dyn Fn(&str) -> Option<String>,
        raw: Value,
    ) -> Result<Request, RequestError> {
        let raw_config = match raw {
            Value::Object(map) => map,
            other => {
                return Err(RequestError::Config(serde::de::Error::custom(format!(
                    "expected a JSON object, found {other}"
                ))))
            }
        };
        let config: NetConf = serde_json::from_value(Value::Object(raw_config.clone()))
            .map_err(RequestError::Config)?;
        let version: Version = config.cni_version.parse()?;
        check_verb_version(command, version)?;
        if !config::is_valid_network_name(&config.name) {
            return Err(RequestError::InvalidNetworkName(config.name.clone()));
        }
        if config.name.len() > config::MAX_NETWORK_NAME {
            return Err(RequestError::NetworkNameTooLong(config.name.len()));
        }

        let non_empty = |key: &str| env(key).filter(|v| !v.is_empty());
        let (container_id, ifname) = if command.is_per_attachment() {
            let id =
                non_empty("CNI_CONTAINERID").ok_or(RequestError::MissingEnv("CNI_CONTAINERID"))?;
            if !config::is_valid_container_id(&id) {
                return Err(RequestError::InvalidContainerId(id));
            }
            if id.len() > config::MAX_CONTAINER_ID {
                return Err(RequestError::ContainerIdTooLong(id.len()));
            }
            let ifname = non_empty("CNI_IFNAME").ok_or(RequestError::MissingEnv("CNI_IFNAME"))?;
            if !config::is_valid_ifname(&ifname) {
                return Err(RequestError::InvalidIfname(ifname));
            }
            (id, ifname)
        } else {
            (String::new(), String::new())
        };
        let netns = non_empty("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(RequestError::MissingEnv("CNI_NETNS"));
        }
        let args = CniArgs::parse(&env("CNI_ARGS").unwrap_or_default())?;
        let cni_path = env("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        let prev_result = config
            .prev_result
            .as_ref()
            .map(CniResult::from_value)
            .transpose()
            .map_err(RequestError::PrevResult)?;

        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args,
            cni_path,
            version,
            config,
            raw_config,
            prev_result,
        })
    }

    /// Parses the plugin's own view of the configuration from the raw object.
    pub fn parse_config<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(Value::Object(self.raw_config.clone()))
    }
}

fn check_verb_version(command: Command, version: Version) -> Result<(), RequestError> {
    let needs = match command {
        Command::Check if !version.supports_check() => "0.4.0",
        Command::Gc | Command::Status if !version.supports_gc_and_status() => "1.1.0",
        _ => return Ok(()),
    };
    Err(RequestError::VerbNotInVersion {
        command: command.as_str(),
        version,
        needs,
    })
}
