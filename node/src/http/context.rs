//! What a handler gets and gives: the request context ([`Ctx`]) and the reply ([`Reply`]).
//! Beneath both the route table and the handlers, which each import it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Serialize;

use super::error::ApiError;
use super::json_response;
use super::query::Query;
use super::query::QueryOptions;
use super::query::QueryTimes;
use super::Api;

/// What a handler's future resolves to.
pub type Reply = Result<Response, ApiError>;

/// A request, as a handler gets it.
pub struct Ctx {
    pub api: Arc<Api>,
    pub headers: HeaderMap,
    pub query: Query,
    /// Under a prefix row: the path after the prefix, still URL-escaped ("" for the bare
    /// prefix). Empty under an exact row.
    pub tail: String,
    pub body: Body,
}

impl Ctx {
    /// The read options of this request (400 for a malformed one).
    pub fn read_options(&self) -> Result<QueryOptions, ApiError> {
        let api = &self.api;
        let times = QueryTimes {
            default: api.default_query_time,
            max: api.max_query_time,
        };
        QueryOptions::parse(&self.query, &self.headers, times, &api.agent.node_name)
    }

    /// Refuse a `?dc` other than this agent's ("No path to datacenter": there is no WAN
    /// forwarding yet).
    pub fn check_dc(&self) -> Result<(), ApiError> {
        match self.query.get("dc") {
            Some(dc) if !dc.is_empty() && !dc.eq_ignore_ascii_case(&self.api.agent.datacenter) => {
                Err(ApiError::internal("No path to datacenter"))
            }
            _ => Ok(()),
        }
    }

    /// `v` as JSON, indented with `?pretty`.
    pub fn json(&self, v: &impl Serialize) -> Response {
        json_response(v, self.query.has("pretty"))
    }
}
