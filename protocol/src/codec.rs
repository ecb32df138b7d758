//! The frame codec: postcard with limits checked before anything is decoded.
//!
//! One WebSocket binary message carries one frame. Decoding is pure and total: any byte
//! string gives a value or a [`DecodeError`], never a panic. The length is checked before
//! decoding; postcard checks every declared length against the bytes actually present
//! before it allocates, so a hostile length prefix cannot make the decoder reserve memory;
//! trailing bytes are refused so that every value has exactly one encoding on the wire.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorCode;
use crate::limits::MAX_FRAME_LEN;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is longer than the limit.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// Length of the frame received.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A field inside the frame is longer than its limit.
    #[error("{field} of {len} bytes exceeds the {limit}-byte limit")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame decoded but bytes were left over.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// The error code a relay answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Self::FieldTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Malformed(_) | Self::TrailingBytes(_) => ErrorCode::MalformedFrame,
        }
    }
}

/// A type that travels on the wire: it can check its own field limits after decoding.
pub trait Wire: Serialize + DeserializeOwned {
    /// Checks limits that the type system cannot express (payload sizes, name lengths).
    fn check_limits(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Encodes a value. Encoding to memory cannot fail for Ferry's types.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the encoding of a value to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // postcard only fails on serializers that cannot grow, on sequences of unknown length
    // and on non-string map keys; Ferry's types have none of these.
    match postcard::to_extend(value, std::mem::take(out)) {
        Ok(bytes) => *out = bytes,
        Err(e) => unreachable!("postcard cannot fail on Ferry's wire types: {e}"),
    }
}

/// Decodes a frame, checking the frame length first and the field limits after.
pub fn decode<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(bytes, MAX_FRAME_LEN)
}

/// [`decode`] with an explicit frame length limit (the relay may configure a lower one).
pub fn decode_with_limit<T: Wire>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::FrameTooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, rest): (T, _) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    value.check_limits()?;
    Ok(value)
}

/// Checks one field's length against its limit.
pub(crate) fn check_len(field: &'static str, len: usize, limit: usize) -> Result<(), DecodeError> {
    if len > limit {
        Err(DecodeError::FieldTooLarge { field, len, limit })
    } else {
        Ok(())
    }
}
