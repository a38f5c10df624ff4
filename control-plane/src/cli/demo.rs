//! `weft demo`'s flags, checked before the demo starts. The demo itself (a control plane, five
//! workloads and their sidecars on loopback) is [`crate::demo`].

use super::Error;

const SAID_BY: &str = "weft demo";

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 30s); without it, run until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Requests per second the demo's load generator sends.
    #[arg(long, default_value_t = 50)]
    rps: u32,
    /// Send the demo's traces to this OTLP endpoint (e.g. http://127.0.0.1:4317).
    #[arg(long)]
    otlp_endpoint: Option<String>,
}

impl Args {
    pub async fn run(self) -> Result<(), Error> {
        let duration = self
            .duration
            .map(|d| weft_runtime::duration::parse_duration(&d))
            .transpose()
            .map_err(|e| Error::usage(SAID_BY, format!("--duration: {e}")))?;
        if self.rps == 0 {
            return Err(Error::usage(
                SAID_BY,
                "--rps 0: the load generator needs at least 1 request a second",
            ));
        }
        crate::demo::run(crate::demo::DemoOptions {
            duration,
            rps: self.rps,
            otlp_endpoint: self.otlp_endpoint,
        })
        .await
        .map_err(|e| Error::failed(SAID_BY, format!("{e:#}")))
    }
}
