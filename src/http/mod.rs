//! HTTP/1.1 (RFC 9112) as a shard speaks it: parsing heads, decoding bodies,
//! writing responses, and the per-connection state machine that ties them.
//! No I/O happens in this module.

pub mod body;
pub mod coding;
pub mod date;
pub mod encode;
pub mod error;
pub mod exchange;
pub mod handler;
pub mod head;
pub mod log;
pub mod parse;
pub mod path;
pub mod response;
pub mod session;
pub mod status;
pub mod upstream;
