//! The wire protocol, shared by every transport: requests in ([`request`]), events out
//! ([`event`]).

pub mod event;
pub mod request;

pub use event::{Done, ErrorBody, ErrorCode, Event, Status, Timings, Usage};
pub use request::{
    Command, GenRequest, Incoming, Prompt, Rejection, parse_json, parse_line, parse_value,
};
