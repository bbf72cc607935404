//! Errors: RFC 9457 problem details, as every refused request answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem, `urn:orchion:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:orchion:problem:invalid-body")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What is wrong with this request, naming the offending field.
    pub detail: String,
    /// The stable code, the last part of `type`.
    pub code: String,
    /// One entry per problem found, for inputs validated as a whole: at most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
    /// How many more problems were found than `errors` lists.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_errors: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One problem with one field.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FieldProblem {
    /// Where in the input, as a JSON pointer (`/name`).
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}
