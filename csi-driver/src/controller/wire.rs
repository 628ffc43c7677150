//! Building the protobuf answers: volumes, snapshots, and the paging of lists.

use std::collections::HashMap;

use tether_csi_proto::v1::{self as csi, volume_content_source};

use crate::grpc::error::{CsiError, CsiResult};
use crate::share::ids::{ShareRef, MAX_ID_BYTES};
use crate::share::store::{self, Source, State, VolumeRecord};

pub fn volume_message(record: &VolumeRecord, share: &ShareRef) -> csi::Volume {
    let content_source = record.source.as_ref().map(|s| csi::VolumeContentSource {
        r#type: Some(match s {
            Source::Snapshot(id) => {
                volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                    snapshot_id: id.clone(),
                })
            }
            Source::Volume(id) => {
                volume_content_source::Type::Volume(volume_content_source::VolumeSource {
                    volume_id: id.clone(),
                })
            }
        }),
    });
    csi::Volume {
        capacity_bytes: record.capacity_bytes,
        volume_id: record.volume_id.clone(),
        volume_context: HashMap::from([
            ("server".to_string(), share.server.clone()),
            ("share".to_string(), share.export.clone()),
            ("path".to_string(), record.path.clone()),
            ("nfsvers".to_string(), share.version.as_option().to_string()),
            ("layout".to_string(), record.settings.layout.clone()),
        ])
        .into_iter()
        .chain(
            (!record.settings.fs_type.is_empty())
                .then(|| ("fsType".to_string(), record.settings.fs_type.clone())),
        )
        // What tether-nfs-agent did for the volume: how its data came from its source, and
        // whether a project quota limits it to its capacity.
        .chain(
            record
                .filled_by
                .clone()
                .map(|how| ("filledBy".to_string(), how)),
        )
        .chain(record.settings.agent.as_ref().map(|_| {
            let limit = if record.limited {
                "project-quota"
            } else {
                "none"
            };
            ("limit".to_string(), limit.to_string())
        }))
        .collect(),
        content_source,
        accessible_topology: Vec::new(),
    }
}

pub fn snapshot_message(record: &store::SnapshotRecord) -> csi::Snapshot {
    let nanos = record.created_unix_nanos;
    csi::Snapshot {
        size_bytes: record.size_bytes,
        snapshot_id: record.snapshot_id.clone(),
        source_volume_id: record.source_volume_id.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: (nanos / 1_000_000_000) as i64,
            nanos: (nanos % 1_000_000_000) as i32,
        }),
        ready_to_use: record.state == State::Ready,
        group_snapshot_id: String::new(),
    }
}

/// A page of `items` (sorted by key) after `token`; `ABORTED` for a token this driver did not make.
pub fn page<T>(
    mut items: Vec<(String, T)>,
    max_entries: i32,
    token: &str,
) -> CsiResult<(Vec<T>, String)> {
    if max_entries < 0 {
        return Err(CsiError::invalid("max_entries must not be negative"));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let start = if token.is_empty() {
        0
    } else {
        let after = decode_token(token).ok_or_else(|| CsiError::StaleToken(token.to_string()))?;
        items.partition_point(|(key, _)| key.as_str() <= after.as_str())
    };
    let take = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let rest: Vec<(String, T)> = items.into_iter().skip(start).collect();
    let more = rest.len() > take;
    let chosen: Vec<(String, T)> = rest.into_iter().take(take).collect();
    let next = match (more, chosen.last()) {
        (true, Some((key, _))) => encode_token(key),
        _ => String::new(),
    };
    Ok((chosen.into_iter().map(|(_, v)| v).collect(), next))
}

/// A paging key holds a share and a record's file name.
const MAX_TOKEN_BYTES: usize = 4 * MAX_ID_BYTES;

pub fn encode_token(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("t1.{hex}")
}

pub fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix("t1.")?;
    if hex.len() % 2 != 0 || hex.len() > MAX_TOKEN_BYTES * 2 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_tokens_and_refuse_foreign_ones() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("id-{i}"), i)).collect();
        let (first, token) = page(items.clone(), 2, "").unwrap();
        assert_eq!(first, [0, 1]);
        let (second, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!(second, [2, 3]);
        let (third, token) = page(items.clone(), 2, &token).unwrap();
        assert_eq!((third, token.as_str()), (vec![4], ""));
        assert!(matches!(
            page(items.clone(), 2, "garbage"),
            Err(CsiError::StaleToken(_))
        ));
        assert!(matches!(
            page(items.clone(), -1, ""),
            Err(CsiError::Invalid(_))
        ));
        let (all, token) = page(items, 0, "").unwrap();
        assert_eq!((all.len(), token.as_str()), (5, ""));
    }
}
