//! `cube worker --join`: a worker registers itself with a manager, as Nomad clients and
//! `docker swarm join` do, and learns the cluster token the manager will present to it.

use std::time::Duration;

use log::{info, warn};
use serde::Deserialize;

/// Where and how to join.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// The manager's URL, `http://host:port`.
    pub manager: String,
    /// A write token of the manager's API, when it has tokens.
    pub token: Option<String>,
    /// `host:port` the manager should reach this worker at; by default the worker's `--host`
    /// and port, or, when it listens on every interface, the address its request comes from.
    pub advertise: Option<String>,
}

/// First wait before asking an unreachable manager again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Time allowed for one join request.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct Answer {
    address: String,
    cluster_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// The body of a join: the address to reach this worker at, or only its port when it listens
/// on every interface (the manager takes the address the request comes from).
pub fn body(name: &str, host: &str, port: u16, advertise: Option<&str>) -> serde_json::Value {
    let unspecified = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    match advertise {
        Some(address) => serde_json::json!({"name": name, "address": address}),
        None if unspecified => serde_json::json!({"name": name, "port": port}),
        None if host.contains(':') => {
            serde_json::json!({"name": name, "address": format!("[{host}]:{port}")})
        }
        None => serde_json::json!({"name": name, "address": format!("{host}:{port}")}),
    }
}

/// Join the manager as `name`, listening on `host:port`: retried while the manager cannot be
/// reached or fails, given up on a refusal (a 4xx names the problem). Returns the cluster
/// token the manager presents to its workers.
pub async fn join(
    config: &JoinConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    name: &str,
    host: &str,
    port: u16,
) -> Result<Option<String>, String> {
    let url = format!("{}/nodes", config.manager.trim_end_matches('/'));
    let body = body(name, host, port, config.advertise.as_deref());
    // TLS for an `https://` manager; the connector takes plain HTTP either way.
    let connector = match &tls {
        Some(c) => awc::Connector::new().rustls_0_23(c.clone()),
        None => awc::Connector::new(),
    };
    let mut http = awc::Client::builder()
        .connector(connector)
        .timeout(JOIN_TIMEOUT);
    if let Some(token) = &config.token {
        http = http.bearer_auth(token);
    }
    let http = http.finish();
    let mut wait = FIRST_RETRY;
    loop {
        let problem = match http.post(&url).send_json(&body).await {
            Ok(mut res) => {
                let status = res.status();
                let bytes = res.body().limit(64 * 1024).await.unwrap_or_default();
                if status.is_success() {
                    let answer: Answer = serde_json::from_slice(&bytes).map_err(|e| {
                        format!("the manager at {url} answered the join with unexpected JSON: {e}")
                    })?;
                    info!(
                        "joined the manager at {} as {name} (reached at {})",
                        config.manager, answer.address
                    );
                    return Ok(answer.cluster_token);
                }
                let message = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                if status.is_client_error() {
                    let hint = if status.as_u16() == 401 || status.as_u16() == 403 {
                        "; give a write token of the manager with --token or CUBE_TOKEN"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "the manager at {} refused the join ({status}): {message}{hint}",
                        config.manager
                    ));
                }
                format!("it answered {status}: {message}")
            }
            Err(e) => e.to_string(),
        };
        warn!(
            "cannot join the manager at {} ({problem}); trying again in {wait:?}",
            config.manager
        );
        actix_rt::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_advertises_where_it_can_be_reached() {
        assert_eq!(
            body("w1", "10.0.0.2", 5556, None)["address"],
            "10.0.0.2:5556"
        );
        assert_eq!(body("w1", "::1", 5556, None)["address"], "[::1]:5556");
        let open = body("w1", "0.0.0.0", 5556, None);
        assert_eq!(open["port"], 5556);
        assert!(open.get("address").is_none());
        assert_eq!(
            body("w1", "0.0.0.0", 5556, Some("n1:7000"))["address"],
            "n1:7000"
        );
    }
}
