//! HTTP sources: `http` (any JSON API), `messari`, `yahoo_finance` and `twitter`, on a shared client
//! ([`client`]: timeouts, retries, `Retry-After`, request budget, credential errors).

pub mod client;
pub mod generic;
pub mod messari;
pub mod twitter;
pub mod yahoo;
