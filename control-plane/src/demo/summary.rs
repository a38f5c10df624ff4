//! The demo's live summary, computed from the sidecars' own `/metrics`.

use std::collections::BTreeMap;

/// Cumulative counts scraped from one proxy for one direction and service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub failures: f64,
    /// `le` bound → cumulative count.
    pub buckets: BTreeMap<u64, f64>,
}

/// Per-second figures between two scrapes.
#[derive(Debug, PartialEq)]
pub struct Rates {
    pub rps: f64,
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Reads `weft_proxy_requests_total` and the duration histogram for `direction` and `service`
/// out of a Prometheus text scrape. Failures are responses with a 5xx status.
pub fn parse(text: &str, direction: &str, service: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("direction").map(String::as_str) != Some(direction)
            || labels.get("service").map(String::as_str) != Some(service)
        {
            continue;
        }
        match name {
            "weft_proxy_requests_total" => {
                c.requests += value;
                if labels.get("status_class").is_some_and(|c| c == "5xx") {
                    c.failures += value;
                }
            }
            "weft_proxy_request_duration_seconds_bucket" => {
                let le = labels
                    .get("le")
                    .map_or(f64::INFINITY, |le| le.parse().unwrap_or(f64::INFINITY));
                let key = if le.is_finite() {
                    (le * 1e6) as u64
                } else {
                    u64::MAX
                };
                *c.buckets.entry(key).or_default() += value;
            }
            _ => {}
        }
    }
    c
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    s.split("\",")
        .filter_map(|kv| kv.split_once("=\""))
        .map(|(k, v)| (k.trim().to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

pub fn rates(before: &Counts, after: &Counts, seconds: f64) -> Rates {
    let n = after.requests - before.requests;
    let failed = after.failures - before.failures;
    let deltas: Vec<(u64, f64)> = after
        .buckets
        .iter()
        .map(|(le, v)| (*le, v - before.buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    Rates {
        rps: n / seconds.max(1e-9),
        success: (n > 0.0).then(|| 1.0 - failed / n),
        p50_ms: quantile(&deltas, 0.5),
        p99_ms: quantile(&deltas, 0.99),
    }
}

/// A quantile from cumulative histogram buckets, interpolated linearly inside the bucket.
fn quantile(buckets: &[(u64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0u64, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le == u64::MAX {
                return Some(prev.0 as f64 / 1e3);
            }
            let width = le - prev.0;
            let within = if count > prev.1 {
                (rank - prev.1) / (count - prev.1)
            } else {
                1.0
            };
            return Some((prev.0 as f64 + within * width as f64) / 1e3);
        }
        prev = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"
weft_proxy_requests_total{direction="inbound",service="orders.shop",status_class="2xx",error=""} 90
weft_proxy_requests_total{direction="inbound",service="orders.shop",status_class="5xx",error="no-endpoints"} 10
weft_proxy_requests_total{direction="outbound",service="orders.shop",status_class="2xx",error=""} 7
weft_proxy_request_duration_seconds_bucket{le="0.001",direction="inbound",service="orders.shop",status_class="2xx",error=""} 50
weft_proxy_request_duration_seconds_bucket{le="0.005",direction="inbound",service="orders.shop",status_class="2xx",error=""} 90
weft_proxy_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="orders.shop",status_class="2xx",error=""} 90
weft_proxy_request_duration_seconds_bucket{le="0.001",direction="inbound",service="orders.shop",status_class="5xx",error="no-endpoints"} 10
weft_proxy_request_duration_seconds_bucket{le="0.005",direction="inbound",service="orders.shop",status_class="5xx",error="no-endpoints"} 10
weft_proxy_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="orders.shop",status_class="5xx",error="no-endpoints"} 10
"#;

    #[test]
    fn rates_from_two_scrapes() {
        let after = parse(SCRAPE, "inbound", "orders.shop");
        assert_eq!(after.requests, 100.0);
        assert_eq!(after.failures, 10.0);
        let r = rates(&Counts::default(), &after, 2.0);
        assert_eq!(r.rps, 50.0);
        assert_eq!(r.success, Some(0.9));
        // 60 of 100 at or under 1 ms: the median is inside the first bucket.
        let p50 = r.p50_ms.unwrap();
        assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
        let p99 = r.p99_ms.unwrap();
        assert!(p99 > 4.0 && p99 <= 5.0, "{p99}");
    }
}
