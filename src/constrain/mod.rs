//! JSON-schema-constrained output: a request's `json_schema` is compiled once
//! ([`schema`]), and at each step the sampler sees `-inf` for every token whose bytes
//! ([`vocab`]) would leave the schema's language ([`matcher`], [`mask`]), so the output always
//! parses, validates, and closes before `max_tokens` runs out.

pub mod mask;
pub mod matcher;
pub mod schema;
pub mod vocab;

pub use mask::{Allowed, Constraint};
pub use schema::{Schema, SchemaError};
pub use vocab::TokenTrie;
