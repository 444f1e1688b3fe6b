//! The `unefois.v1` gRPC contract of Une Fois.
//!
//! The .proto files under `proto/unefois/v1/` are compiled at build time in pure Rust (protox,
//! no system `protoc`) into prost messages and tonic clients and servers, all in [`v1`].
//! [`FILE_DESCRIPTOR_SET`] holds the encoded descriptors, for server reflection.
//!
//! Errors carry a gRPC status code and a [`v1::ErrorReason`] in `google.rpc.ErrorInfo.reason`
//! (the name given by `ErrorReason::as_str_name`), under the domain [`ERROR_DOMAIN`].
#![forbid(unsafe_code)]

/// Generated code of the `unefois.v1` package: messages, enums, clients and servers.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("unefois.v1");
}

/// The encoded `FileDescriptorSet` of the `unefois.v1` files and their imports (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("unefois_descriptor");

/// The `google.rpc.ErrorInfo.domain` of every error the broker returns.
pub const ERROR_DOMAIN: &str = "unefois.v1";

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    const SERVICES: [&str; 7] = [
        "unefois.v1.Exchange",
        "unefois.v1.Guichet",
        "unefois.v1.Consents",
        "unefois.v1.Mandates",
        "unefois.v1.Audit",
        "unefois.v1.Registry",
        "unefois.v1.Provider",
    ];

    #[test]
    fn descriptor_set_holds_every_service() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let services: Vec<String> = fds
            .file
            .iter()
            .flat_map(|file| {
                file.service
                    .iter()
                    .map(move |s| format!("{}.{}", file.package(), s.name()))
            })
            .collect();
        for name in SERVICES {
            assert!(services.iter().any(|s| s == name), "missing service {name}");
        }
        assert!(
            fds.file
                .iter()
                .any(|f| f.name() == "google/protobuf/timestamp.proto")
        );
    }

    #[test]
    fn error_reason_round_trips() {
        let mut seen = 0;
        for value in 0..=i32::from(u8::MAX) {
            let Ok(reason) = v1::ErrorReason::try_from(value) else {
                continue;
            };
            seen += 1;
            let name = reason.as_str_name();
            assert_eq!(v1::ErrorReason::from_str_name(name), Some(reason));
        }
        assert_eq!(seen, 44);
        assert_eq!(
            v1::ErrorReason::MandateOutOfScope.as_str_name(),
            "MANDATE_OUT_OF_SCOPE"
        );
        assert_eq!(
            v1::ErrorReason::from_str_name("LEAF_INDEX_OUT_OF_RANGE"),
            Some(v1::ErrorReason::LeafIndexOutOfRange)
        );
        assert_eq!(v1::ErrorReason::from_str_name("NOT_A_REASON"), None);
    }

    #[test]
    fn generated_names_match_the_contract() {
        assert_eq!(v1::Role::Provider.as_str_name(), "ROLE_PROVIDER");
        assert_eq!(
            v1::ConsentStatus::Active.as_str_name(),
            "CONSENT_STATUS_ACTIVE"
        );
        assert_eq!(
            v1::MandateStatus::Revoked.as_str_name(),
            "MANDATE_STATUS_REVOKED"
        );
        let value = v1::ClaimValue {
            value: Some(v1::claim_value::Value::IntegerValue(742)),
        };
        let decoded =
            v1::ClaimValue::decode(value.encode_to_vec().as_slice()).expect("claim value decodes");
        assert_eq!(decoded, value);
    }
}
