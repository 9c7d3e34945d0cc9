//! Strict decoding: protobuf silently drops fields it does not know, which would let a
//! newer or hostile client believe the server stored something it threw away. The
//! server decodes register requests through here and refuses unknown fields by path.
use prost_reflect::{DescriptorPool, DynamicMessage, Value};
use std::sync::OnceLock;

#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unknown field number {number} in {path}")]
    UnknownField { path: String, number: u32 },
    #[error("descriptor for {0} missing")]
    NoDescriptor(String),
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::DESCRIPTOR_SET)
            .expect("the descriptor set compiled into this binary decodes")
    })
}

/// Checks that `bytes`, a message of type `full_name`, holds only fields the schema knows,
/// at every depth.
pub fn check_known_fields(full_name: &str, bytes: &[u8]) -> Result<(), StrictError> {
    let desc = pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| StrictError::NoDescriptor(full_name.to_string()))?;
    let msg =
        DynamicMessage::decode(desc, bytes).map_err(|e| StrictError::Malformed(e.to_string()))?;
    walk(&msg, full_name)
}

fn walk(msg: &DynamicMessage, path: &str) -> Result<(), StrictError> {
    if let Some(unknown) = msg.unknown_fields().next() {
        return Err(StrictError::UnknownField {
            path: path.to_string(),
            number: unknown.number(),
        });
    }
    for (field, value) in msg.fields() {
        let child = format!("{path}.{}", field.name());
        match value {
            Value::Message(m) => walk(m, &child)?,
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(m) = item {
                        walk(m, &format!("{child}[{i}]"))?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::agent::v1::{Hardware, RegisterRequest, System};
    use prost::Message;

    #[test]
    fn known_fields_pass_unknown_fail() {
        let req = RegisterRequest {
            boot_id: "b".into(),
            hardware: Some(Hardware {
                system: Some(System {
                    uuid: "x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut bytes = req.encode_to_vec();
        check_known_fields("siderite.agent.v1.RegisterRequest", &bytes).unwrap();
        // Field 99, varint 1, appended at top level.
        bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
        let err = check_known_fields("siderite.agent.v1.RegisterRequest", &bytes).unwrap_err();
        assert!(
            matches!(err, StrictError::UnknownField { number: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn nested_unknown_field_is_named() {
        // Hardware with unknown field 77 (varint) inside, wrapped as field 3 of RegisterRequest.
        let inner = [0xe8, 0x04, 0x01];
        let mut bytes = vec![0x1a, inner.len() as u8];
        bytes.extend_from_slice(&inner);
        let err = check_known_fields("siderite.agent.v1.RegisterRequest", &bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field number 77 in siderite.agent.v1.RegisterRequest.hardware"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let err = check_known_fields("siderite.agent.v1.RegisterRequest", &[0xff, 0xff, 0xff])
            .unwrap_err();
        assert!(matches!(err, StrictError::Malformed(_)));
    }
}
