//! What the jobs of this process did, for Prometheus: vLLM's request-latency histograms (time
//! to first token, time per output token, end-to-end latency) and a count of jobs by kind and
//! outcome, labelled by model and factory only (never by tenant). Observed once per job, where
//! it is settled or failed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model_name: String,
    pub factory: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub model_name: String,
    pub factory: String,
    pub kind: String,
    pub status: String,
}

type Histograms = Family<ModelLabels, Histogram, fn() -> Histogram>;

// vLLM's buckets, so existing dashboards read these the same way.
fn ttft() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ])
}

fn tpot() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
    ])
}

fn e2e() -> Histogram {
    Histogram::new([
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    ])
}

#[derive(Clone, Debug)]
pub struct JobMetrics {
    time_to_first_token: Histograms,
    time_per_output_token: Histograms,
    e2e_latency: Histograms,
    jobs: Family<JobLabels, Counter>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            time_to_first_token: Family::new_with_constructor(ttft as fn() -> Histogram),
            time_per_output_token: Family::new_with_constructor(tpot as fn() -> Histogram),
            e2e_latency: Family::new_with_constructor(e2e as fn() -> Histogram),
            jobs: Family::default(),
        }
    }
}

/// One finished job as the metrics see it.
pub(crate) struct Observed<'a> {
    pub model: &'a str,
    pub factory: &'a str,
    pub kind: &'a str,
    /// `succeeded`, `cancelled` or `failed`.
    pub status: &'a str,
    pub completion_tokens: usize,
    pub time_to_first_token: std::time::Duration,
    pub decode_time: std::time::Duration,
    pub e2e_seconds: f64,
}

impl JobMetrics {
    pub(crate) fn observe(&self, o: &Observed<'_>) {
        let labels = ModelLabels {
            model_name: o.model.to_string(),
            factory: o.factory.to_string(),
        };
        self.jobs
            .get_or_create(&JobLabels {
                model_name: o.model.to_string(),
                factory: o.factory.to_string(),
                kind: o.kind.to_string(),
                status: o.status.to_string(),
            })
            .inc();
        if o.status == "failed" {
            return;
        }
        self.e2e_latency
            .get_or_create(&labels)
            .observe(o.e2e_seconds);
        if o.completion_tokens > 0 {
            self.time_to_first_token
                .get_or_create(&labels)
                .observe(o.time_to_first_token.as_secs_f64());
        }
        // Per output token after the first, as vLLM measures it; only for jobs that ran to
        // their end (a cancelled job's decode time also covers tokens it never delivered).
        if o.status == "succeeded" && o.completion_tokens > 1 {
            self.time_per_output_token
                .get_or_create(&labels)
                .observe(o.decode_time.as_secs_f64() / (o.completion_tokens - 1) as f64);
        }
    }

    /// Adds these metrics to a registry being scraped.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vllm:time_to_first_token_seconds",
            "Time to first token in seconds",
            self.time_to_first_token.clone(),
        );
        registry.register(
            "vllm:time_per_output_token_seconds",
            "Time per output token after the first, in seconds",
            self.time_per_output_token.clone(),
        );
        registry.register(
            "vllm:e2e_request_latency_seconds",
            "End-to-end request latency (admission to settlement) in seconds",
            self.e2e_latency.clone(),
        );
        registry.register(
            "tokenmill_jobs",
            "Jobs that ended, by kind and status",
            self.jobs.clone(),
        );
    }
}
