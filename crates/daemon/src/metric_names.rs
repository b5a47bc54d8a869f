//! The daemon's Prometheus metrics: their names, help texts and units in
//! one place (docs/daemon.md, "Metrics"). Every series carries the label
//! `fspl_job` (the daemon job's name): not `job`, which Prometheus sets on
//! every scraped series itself (the scrape job) and would rename ours to
//! `exported_job`.
//!
//! Naming rule for new metrics: `fspl_` prefix; base units spelled out at
//! the end (`_seconds`, `_bytes`, `_timestamp_seconds` for Unix times);
//! counters end in `_total`, nothing else does; labels are `fspl_job` plus
//! low-cardinality ones (`result`, never a file name or a seq); describe
//! the metric in [`describe`] so that `/metrics` carries its HELP line
//! (`promtool check metrics` requires one).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Register the help text (and unit) of every metric the daemon exports.
pub fn describe() {
    describe_counter!(
        "fspl_jobs_processed_total",
        "Attempts to run a job of a process queue, by result"
    );
    describe_counter!(
        "fspl_nats_wait_messages_total",
        "Messages a nats-wait job received, by result: its command succeeded, failed, or the message was dropped by the checks"
    );
    describe_counter!(
        "fspl_jobs_refused_total",
        "Jobs refused without running and moved to rejected/"
    );
    describe_counter!(
        "fspl_runs_total",
        "Runs of the daemon job (a pass over its queue), by result"
    );
    describe_gauge!(
        "fspl_consecutive_failures",
        "Failed runs in a row; the error state comes at max_failures"
    );
    describe_histogram!(
        "fspl_job_duration_seconds",
        Unit::Seconds,
        "How long the commands of a process queue ran"
    );
    describe_counter!(
        "fspl_transport_jobs_total",
        "Jobs moved by push and pull daemon jobs, by result"
    );
    describe_counter!(
        "fspl_transport_bytes_total",
        Unit::Bytes,
        "Bytes of the jobs sent or taken by push and pull daemon jobs"
    );
    describe_gauge!(
        "fspl_queue_jobs",
        "Jobs in the queue at or after nextseq, after the last run"
    );
    describe_gauge!(
        "fspl_queue_blocked",
        "1 while the queue cannot progress (gap, failing, error state)"
    );
    describe_gauge!(
        "fspl_queue_error",
        "1 while the daemon job is in its error state"
    );
    describe_gauge!(
        "fspl_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last successful command or transfer"
    );
    describe_gauge!(
        "fspl_oldest_queued_age_seconds",
        Unit::Seconds,
        "Age of the oldest job waiting (0 when none)"
    );
    describe_gauge!(
        "fspl_queue_bytes",
        Unit::Bytes,
        "Bytes of the job files waiting"
    );
    describe_gauge!(
        "fspl_seconds_since_success",
        Unit::Seconds,
        "Seconds since the last success (after the first one)"
    );
    describe_gauge!(
        "fspl_job_stale",
        "1 while the daemon job is stale (no success for stale_after while work waits)"
    );
    describe_gauge!(
        "fspl_transport_throughput_bytes_per_second",
        "Bytes per second of the last push or pull run that moved any"
    );
    describe_gauge!(
        "fspl_s3_upload_throughput_bytes_per_second",
        "Bytes per second of the uploads last measured (completed bytes over the time uploads were under way)"
    );
    describe_gauge!(
        "fspl_sync_throughput_bytes_per_second",
        "Bytes per second of the last sync round that moved any (change sets sent and received)"
    );
    describe_counter!(
        "fspl_pruned_files_total",
        "Files removed by prune jobs and keep rules"
    );
    describe_counter!(
        "fspl_sync_files_total",
        "Files of tree sync rounds, by what happened to them"
    );
    describe_counter!(
        "fspl_sync_bytes_total",
        Unit::Bytes,
        "Bytes of change sets sent and received by sync jobs"
    );
    describe_gauge!(
        "fspl_sync_last_round_files",
        "Files of the last sync round, by what happened to them"
    );
    describe_gauge!(
        "fspl_sync_progress_percent",
        "Progress of the running sync round (100 when ready)"
    );
    describe_counter!(
        "fspl_s3_upload_files_total",
        "Files of s3-upload jobs, by result (uploaded, failed)"
    );
    describe_counter!(
        "fspl_s3_upload_bytes_total",
        Unit::Bytes,
        "Bytes uploaded by s3-upload jobs"
    );
    describe_gauge!(
        "fspl_s3_upload_queued_files",
        "Files waiting in an s3-upload job's incoming directory"
    );
    describe_gauge!(
        "fspl_s3_upload_uploading_files",
        "Files an s3-upload job is uploading now"
    );
}
