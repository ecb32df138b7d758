//! Checks on messages the relay stores without tracking: application messages, Welcomes and
//! GroupInfos. The relay reads cleartext headers only.

use openmls::prelude::{ContentType, MlsMessageBodyIn};

use super::group::{check_info_header, decode_group_info};
use crate::wire;
use crate::{CIPHERSUITE, MlsRefusal};

/// Reads the cleartext header of an application message: `(group id, epoch)`.
///
/// The message must be an `MLSMessage` holding a PrivateMessage whose (cleartext) content type
/// is application. Nothing is decrypted: the relay has no key that could.
pub fn inspect_application(message: &[u8]) -> Result<(Vec<u8>, u64), MlsRefusal> {
    match wire::decode(message)? {
        MlsMessageBodyIn::PrivateMessage(private)
            if private.content_type() == ContentType::Application =>
        {
            Ok((private.group_id().to_vec(), private.epoch().as_u64()))
        }
        _ => Err(MlsRefusal::NotApplication),
    }
}

/// Checks that the bytes are an `MLSMessage` holding a Welcome for Ferry's ciphersuite.
pub fn check_welcome(bytes: &[u8]) -> Result<(), MlsRefusal> {
    match wire::decode(bytes)? {
        MlsMessageBodyIn::Welcome(welcome) if welcome.ciphersuite() == CIPHERSUITE => Ok(()),
        MlsMessageBodyIn::Welcome(_) => Err(MlsRefusal::WrongCiphersuite),
        other => Err(MlsRefusal::Malformed(format!(
            "expected a welcome, got {}",
            wire::kind(&other)
        ))),
    }
}

/// Checks a GroupInfo's header: an `MLSMessage` holding a GroupInfo of `group_id` at `epoch`,
/// Ferry's ciphersuite, with the ratchet-tree and external-public-key extensions a rejoining
/// device needs. The signature is not checked here (that needs the tree the relay tracks:
/// [`crate::DsGroup::check_group_info`] does it all).
pub fn check_group_info(bytes: &[u8], group_id: &[u8], epoch: u64) -> Result<(), MlsRefusal> {
    let info = decode_group_info(bytes)?;
    check_info_header(&info, group_id, epoch)
}
