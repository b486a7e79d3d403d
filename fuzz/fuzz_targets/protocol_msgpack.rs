//! The MessagePack hub protocol parser (`protocol::msgpack` through `Protocol::parse`).
//!
//! Input: one control byte, then the bytes a client sends (varint length prefix and MessagePack body per
//! message). The control byte's low two bits pick the maximum message size (32 KiB, 1024, 64 or 16 bytes),
//! the other six a chunk size (0: the whole input at once). The input is parsed until the parser needs
//! more bytes or fails, whole and in chunks, and the two must agree; every message is then encoded again in
//! both protocols and parsed back.
#![no_main]

mod common;

use hubcast::protocol::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::fuzz_protocol(Protocol::MessagePack, data));
