//! MLS messages in and out of bytes.
//!
//! Every Ferry MLS object travels as an RFC 9420 `MLSMessage` (version + wire format + body):
//! KeyPackages, GroupInfos, Welcomes, and public and private messages alike. Decoding is
//! total and exact: trailing bytes are refused.

use openmls::prelude::{
    MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, tls_codec::DeserializeBytes,
};

use crate::MlsRefusal;

/// The largest MLS message Ferry decodes (a GroupInfo with the ratchet tree of a large group
/// is the biggest thing that travels).
pub const MAX_MLS_MESSAGE_LEN: usize = 4 * 1024 * 1024;

/// Decodes one `MLSMessage` and returns its body.
pub(crate) fn decode(bytes: &[u8]) -> Result<MlsMessageBodyIn, MlsRefusal> {
    if bytes.len() > MAX_MLS_MESSAGE_LEN {
        return Err(MlsRefusal::Malformed("MLS message too long".into()));
    }
    MlsMessageIn::tls_deserialize_exact_bytes(bytes)
        .map(MlsMessageIn::extract)
        .map_err(|e| MlsRefusal::Malformed(format!("not an MLS message: {e}")))
}

/// Encodes an outgoing message.
pub(crate) fn encode(message: &MlsMessageOut) -> Result<Vec<u8>, MlsRefusal> {
    message
        .to_bytes()
        .map_err(|e| MlsRefusal::Malformed(format!("cannot encode MLS message: {e}")))
}

/// The kind of message body, for error messages.
pub(crate) fn kind(body: &MlsMessageBodyIn) -> &'static str {
    match body {
        MlsMessageBodyIn::PublicMessage(_) => "a public message",
        MlsMessageBodyIn::PrivateMessage(_) => "a private message",
        MlsMessageBodyIn::Welcome(_) => "a welcome",
        MlsMessageBodyIn::GroupInfo(_) => "a group info",
        MlsMessageBodyIn::KeyPackage(_) => "a key package",
        // Draft message kinds exist only when another crate enables openmls features.
        #[allow(unreachable_patterns)]
        _ => "another kind of MLS message",
    }
}
