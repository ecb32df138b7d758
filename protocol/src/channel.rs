//! The encrypted channel that carries every frame after the handshake.
//!
//! Each direction has its own ChaCha20-Poly1305 key (derived in the handshake) and its own
//! 64-bit counter. The nonce of the n-th frame in a direction is `0u32 ‖ n` (big-endian);
//! the counter is never sent, so a frame that is replayed, reordered, dropped, truncated or
//! tampered with fails to authenticate. Any failure poisons the channel: every later call
//! fails too, and the driver must end the connection.
//!
//! Wire format of one frame: `ciphertext ‖ tag(16)`, where the plaintext is the postcard
//! encoding of the frame.

use std::marker::PhantomData;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::Serialize;

use crate::ErrorCode;
use crate::codec::{self, DecodeError, Wire};
use crate::frames::{ClientFrame, ServerFrame};
use crate::limits::{CHANNEL_OVERHEAD, MAX_FRAME_LEN};

/// The client's end: sends [`ClientFrame`], receives [`ServerFrame`].
pub type ClientChannel = Channel<ClientFrame, ServerFrame>;
/// The relay's end: sends [`ServerFrame`], receives [`ClientFrame`].
pub type ServerChannel = Channel<ServerFrame, ClientFrame>;

/// Why the channel refused a frame. After any of these the channel is closed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The frame did not authenticate: tampered, replayed, reordered or truncated.
    #[error("frame failed to authenticate")]
    Decrypt,
    /// The frame authenticated but does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The ciphertext is longer than any valid frame.
    #[error("encrypted frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A 2^64-frame counter ran out (not reachable in practice).
    #[error("nonce counter exhausted")]
    Exhausted,
    /// An earlier frame failed; the connection must end.
    #[error("channel closed after an earlier failure")]
    Closed,
}

impl ChannelError {
    /// The error code to report.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decrypt | Self::Exhausted | Self::Closed => ErrorCode::DecryptFailed,
            Self::Decode(e) => e.code(),
            Self::TooLarge(_) => ErrorCode::FrameTooLarge,
        }
    }
}

/// A frame already encoded, so the relay can encode once and seal for many recipients.
#[derive(Clone, Debug)]
pub struct Encoded<T> {
    bytes: Vec<u8>,
    _type: PhantomData<fn() -> T>,
}

impl<T: Serialize> Encoded<T> {
    /// Encodes `frame`.
    pub fn new(frame: &T) -> Self {
        Self {
            bytes: codec::encode(frame),
            _type: PhantomData,
        }
    }

    /// Wraps bytes that are not necessarily a valid `T` (tests and fuzzing only).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn from_raw(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            _type: PhantomData,
        }
    }

    /// A copy of the encoding with room for the tag, ready to be sealed in place.
    fn to_buffer(&self) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(self.bytes.len() + CHANNEL_OVERHEAD);
        buffer.extend_from_slice(&self.bytes);
        buffer
    }

    /// Length of the encoding.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// One direction: a key and the number of frames already sealed or opened with it.
struct CipherState {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl CipherState {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, ChannelError> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(ChannelError::Exhausted)?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Ok(Nonce::from(nonce))
    }

    fn seal_in_place(&mut self, buffer: &mut Vec<u8>) -> Result<(), ChannelError> {
        let nonce = self.next_nonce()?;
        self.cipher
            .encrypt_in_place(&nonce, b"", buffer)
            .map_err(|_| ChannelError::TooLarge(buffer.len()))
    }

    fn open(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        if ciphertext.len() > MAX_FRAME_LEN + CHANNEL_OVERHEAD {
            return Err(ChannelError::TooLarge(ciphertext.len()));
        }
        let nonce = self.next_nonce()?;
        let mut buffer = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place(&nonce, b"", &mut buffer)
            .map_err(|_| ChannelError::Decrypt)?;
        Ok(buffer)
    }
}

/// An encrypted, ordered, authenticated channel that sends `Out` and receives `In`.
pub struct Channel<Out, In> {
    send: CipherState,
    recv: CipherState,
    closed: bool,
    _types: PhantomData<fn(Out) -> In>,
}

impl<Out, In> std::fmt::Debug for Channel<Out, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("sent", &self.send.counter)
            .field("received", &self.recv.counter)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<Out: Wire, In: Wire> Channel<Out, In> {
    pub(crate) fn new(send_key: &[u8; 32], recv_key: &[u8; 32]) -> Self {
        Self {
            send: CipherState::new(send_key),
            recv: CipherState::new(recv_key),
            closed: false,
            _types: PhantomData,
        }
    }

    /// Encrypts one frame for the wire.
    pub fn seal(&mut self, frame: &Out) -> Result<Vec<u8>, ChannelError> {
        self.seal_value(frame)
    }

    /// Encrypts a frame encoded earlier with [`Encoded::new`].
    pub fn seal_encoded(&mut self, frame: &Encoded<Out>) -> Result<Vec<u8>, ChannelError> {
        self.seal_buffer(frame.to_buffer())
    }

    /// Decrypts and decodes one frame from the wire.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<In, ChannelError> {
        self.open_value(ciphertext)
    }

    /// Splits the channel into its sending and receiving halves, so one task can read while
    /// another writes. Each half closes on its own failures; the driver ends the connection
    /// when either fails.
    pub fn split(self) -> (SendHalf<Out>, RecvHalf<In>) {
        let send = SendHalf {
            state: self.send,
            closed: self.closed,
            _type: PhantomData,
        };
        let recv = RecvHalf {
            state: self.recv,
            closed: self.closed,
            _type: PhantomData,
        };
        (send, recv)
    }

    /// Whether an earlier failure closed the channel.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Frames sealed so far in the sending direction.
    pub fn sent(&self) -> u64 {
        self.send.counter
    }

    /// Frames opened so far in the receiving direction.
    pub fn received(&self) -> u64 {
        self.recv.counter
    }

    /// Seals any serializable value (used for the handshake's encrypted messages).
    pub(crate) fn seal_value<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<Vec<u8>, ChannelError> {
        let mut buffer = Vec::new();
        codec::encode_into(value, &mut buffer);
        self.seal_buffer(buffer)
    }

    fn seal_buffer(&mut self, buffer: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
        seal_checked(&mut self.send, &mut self.closed, buffer)
    }

    /// Opens and decodes any wire value (used for the handshake's encrypted messages).
    pub(crate) fn open_value<T: Wire>(&mut self, ciphertext: &[u8]) -> Result<T, ChannelError> {
        open_checked(&mut self.recv, &mut self.closed, ciphertext)
    }
}

/// The sending half of a [`Channel`].
pub struct SendHalf<Out> {
    state: CipherState,
    closed: bool,
    _type: PhantomData<fn(Out)>,
}

/// The receiving half of a [`Channel`].
pub struct RecvHalf<In> {
    state: CipherState,
    closed: bool,
    _type: PhantomData<fn() -> In>,
}

impl<Out> std::fmt::Debug for SendHalf<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("sent", &self.state.counter)
            .finish_non_exhaustive()
    }
}

impl<In> std::fmt::Debug for RecvHalf<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf")
            .field("received", &self.state.counter)
            .finish_non_exhaustive()
    }
}

impl<Out: Wire> SendHalf<Out> {
    /// Encrypts one frame for the wire.
    pub fn seal(&mut self, frame: &Out) -> Result<Vec<u8>, ChannelError> {
        let mut buffer = Vec::new();
        codec::encode_into(frame, &mut buffer);
        self.seal_buffer(buffer)
    }

    /// Encrypts a frame encoded earlier with [`Encoded::new`].
    pub fn seal_encoded(&mut self, frame: &Encoded<Out>) -> Result<Vec<u8>, ChannelError> {
        self.seal_buffer(frame.to_buffer())
    }

    fn seal_buffer(&mut self, buffer: Vec<u8>) -> Result<Vec<u8>, ChannelError> {
        seal_checked(&mut self.state, &mut self.closed, buffer)
    }
}

impl<In: Wire> RecvHalf<In> {
    /// Decrypts and decodes one frame from the wire.
    pub fn open(&mut self, ciphertext: &[u8]) -> Result<In, ChannelError> {
        open_checked(&mut self.state, &mut self.closed, ciphertext)
    }
}

/// Seals a plaintext buffer, closing the direction on any failure.
fn seal_checked(
    state: &mut CipherState,
    closed: &mut bool,
    mut buffer: Vec<u8>,
) -> Result<Vec<u8>, ChannelError> {
    if *closed {
        return Err(ChannelError::Closed);
    }
    if buffer.len() > MAX_FRAME_LEN {
        *closed = true;
        return Err(ChannelError::TooLarge(buffer.len()));
    }
    buffer.reserve_exact(CHANNEL_OVERHEAD);
    state
        .seal_in_place(&mut buffer)
        .inspect_err(|_| *closed = true)?;
    Ok(buffer)
}

/// Opens and decodes a frame, closing the direction on any failure.
fn open_checked<T: Wire>(
    state: &mut CipherState,
    closed: &mut bool,
    ciphertext: &[u8],
) -> Result<T, ChannelError> {
    if *closed {
        return Err(ChannelError::Closed);
    }
    let result = state
        .open(ciphertext)
        .and_then(|plain| Ok(codec::decode(&plain)?));
    if result.is_err() {
        *closed = true;
    }
    result
}
