//! The gRPC codec of every siderite service: prost on the wire, plus strict decoding of
//! what clients send (requests and agent stream messages). An unknown field there is an
//! `InvalidArgument` naming the field, instead of data silently thrown away; responses
//! decode leniently so an older client can talk to a newer server.
use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;

use crate::strict::{check_known_fields, StrictError};

#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

/// Messages that clients send: these are checked for unknown fields.
fn is_client_message(full_name: &str) -> bool {
    full_name.ends_with("Request") || full_name == "siderite.agent.v1.AgentMessage"
}

impl<U: Message + Name + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes_shim::Buf;
        let len = buf.remaining();
        let bytes = buf.copy_to_bytes(len);
        let name = U::full_name();
        if is_client_message(&name) {
            check_known_fields(&name, &bytes).map_err(|e| match e {
                StrictError::NoDescriptor(_) => Status::internal(e.to_string()),
                _ => Status::invalid_argument(format!("{name}: {e}")),
            })?;
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("{name}: malformed message: {e}")))
    }
}

/// `bytes::Buf` as re-exported by prost, so this crate needs no direct `bytes` dependency.
mod bytes_shim {
    pub use prost::bytes::Buf;
}
