//! The device manager's checkpoint, `<dir>/kubelet_internal_checkpoint`, in upstream's JSON
//! layout (tools such as GPU exporters read it):
//! `{"Data": {"PodDeviceEntries": [{"PodUID", "ContainerName", "ResourceName", "DeviceIDs":
//! {"<numa node>": [ids]}, "AllocResp": <base64 of the ContainerAllocateResponse>}],
//! "RegisteredDevices": {resource: [healthy ids]}}, "Checksum": n}`.
//!
//! The checksum is FNV-32a, as upstream's, but over the JSON of `Data` rather than over
//! Go's spew dump of the structs: kaze reads its own files, not upstream's (a file whose
//! checksum does not match is ignored as corrupt, as upstream ignores it).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::proto;
use super::state::{Allocation, PodDevices};

pub const FILE: &str = "kubelet_internal_checkpoint";

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(rename = "Data")]
    pub data: Data,
    #[serde(rename = "Checksum", default)]
    pub checksum: u32,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Data {
    #[serde(
        rename = "PodDeviceEntries",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub entries: Vec<Entry>,
    #[serde(
        rename = "RegisteredDevices",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub registered: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "PodUID")]
    pub pod_uid: String,
    #[serde(rename = "ContainerName")]
    pub container: String,
    #[serde(rename = "ResourceName")]
    pub resource: String,
    /// NUMA node (as Go writes an `int64` map key: a string) -> device ids.
    #[serde(rename = "DeviceIDs", default, deserialize_with = "null_as_empty")]
    pub device_ids: BTreeMap<String, Vec<String>>,
    /// The protobuf encoding of the plugin's `ContainerAllocateResponse`, base64 (Go's
    /// `[]byte` in JSON).
    #[serde(rename = "AllocResp", default)]
    pub alloc_resp: String,
}

/// Go writes nil slices and maps as `null`.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl Data {
    /// The checkpoint of `pods` and the healthy devices per resource.
    pub fn new(pods: &PodDevices, healthy: &BTreeMap<String, BTreeSet<String>>) -> Data {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut entries = Vec::new();
        for (pod, containers) in pods {
            for (container, resources) in containers {
                for (resource, a) in resources {
                    entries.push(Entry {
                        pod_uid: pod.clone(),
                        container: container.clone(),
                        resource: resource.clone(),
                        device_ids: a
                            .devices
                            .iter()
                            .map(|(n, ids)| (n.to_string(), ids.clone()))
                            .collect(),
                        alloc_resp: b64.encode(a.response.encode_to_vec()),
                    });
                }
            }
        }
        Data {
            entries,
            registered: healthy
                .iter()
                .map(|(r, ids)| (r.clone(), ids.iter().cloned().collect()))
                .collect(),
        }
    }

    /// The pods' devices and the registered resources; entries that do not decode are
    /// skipped (logged), as upstream's `fromCheckpointData` does.
    pub fn pods(&self) -> (PodDevices, BTreeSet<String>) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut pods = PodDevices::new();
        for e in &self.entries {
            let response = b64
                .decode(&e.alloc_resp)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    proto::ContainerAllocateResponse::decode(b.as_slice())
                        .map_err(|e| e.to_string())
                });
            let response = match response {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(pod_uid = %e.pod_uid, container = %e.container, resource = %e.resource, error = %err, "skipping a device checkpoint entry");
                    continue;
                }
            };
            let devices = e
                .device_ids
                .iter()
                .map(|(n, ids)| (n.parse().unwrap_or(super::state::NO_TOPOLOGY), ids.clone()))
                .collect();
            pods.entry(e.pod_uid.clone())
                .or_default()
                .entry(e.container.clone())
                .or_default()
                .insert(e.resource.clone(), Allocation { devices, response });
        }
        (pods, self.registered.keys().cloned().collect())
    }

    fn checksum(&self) -> u32 {
        fnv32a(&serde_json::to_vec(self).unwrap_or_default())
    }
}

impl Checkpoint {
    pub fn of(data: Data) -> Checkpoint {
        let checksum = data.checksum();
        Checkpoint { data, checksum }
    }

    /// Parse a checkpoint file, checking its checksum.
    pub fn parse(bytes: &[u8]) -> Result<Data, String> {
        let c: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if c.data.checksum() != c.checksum {
            return Err("checkpoint is corrupted (checksum mismatch)".into());
        }
        Ok(c.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_in_upstreams_layout() {
        let response = proto::ContainerAllocateResponse {
            envs: [("GPU".to_string(), "g0".to_string())].into(),
            ..Default::default()
        };
        let mut pods = PodDevices::new();
        pods.entry("uid-1".into())
            .or_default()
            .entry("main".into())
            .or_default()
            .insert(
                "example.com/gpu".into(),
                Allocation {
                    devices: BTreeMap::from([(-1, vec!["g0".into()]), (1, vec!["g1".into()])]),
                    response: response.clone(),
                },
            );
        let healthy = BTreeMap::from([(
            "example.com/gpu".to_string(),
            BTreeSet::from(["g0".to_string(), "g1".to_string(), "g2".to_string()]),
        )]);
        let bytes = serde_json::to_vec(&Checkpoint::of(Data::new(&pods, &healthy))).expect("json");
        let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let entry = &json["Data"]["PodDeviceEntries"][0];
        assert_eq!(entry["PodUID"], "uid-1");
        assert_eq!(entry["ResourceName"], "example.com/gpu");
        assert_eq!(entry["DeviceIDs"]["-1"], serde_json::json!(["g0"]));
        assert_eq!(
            json["Data"]["RegisteredDevices"]["example.com/gpu"],
            serde_json::json!(["g0", "g1", "g2"])
        );
        assert!(json["Checksum"].as_u64().is_some());
        let data = Checkpoint::parse(&bytes).expect("parses");
        let (back, registered) = data.pods();
        assert_eq!(back, pods);
        assert_eq!(registered, BTreeSet::from(["example.com/gpu".to_string()]));
        // a changed byte is caught
        let tampered = String::from_utf8(bytes)
            .expect("utf-8")
            .replace("\"g2\"", "\"g3\"");
        assert!(Checkpoint::parse(tampered.as_bytes()).is_err());
        // Go's nulls for empty slices and maps
        let empty = Checkpoint::of(Data::default());
        let text = serde_json::to_string(&empty)
            .expect("json")
            .replace("[]", "null")
            .replace("{}", "null");
        assert_eq!(Checkpoint::parse(text.as_bytes()), Ok(Data::default()));
    }

    #[test]
    fn fnv32a_is_the_standard_one() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }
}
