//! All integration tests of the `fspl` binary, in one test binary (one link,
//! shared fixtures). They run real processes in real temporary directories;
//! interoperability tests also run the reference Filespooler 1.2.4, which
//! `helper::reference_bin` installs when it is missing.

mod helper;

mod codecs;

mod bad_input;
mod both;
mod cli_compat;
mod crash;
mod daemon;
mod daemon_hooks;
mod daemon_kinds;
mod daemon_nats_wait;
mod daemon_newcomer;
mod fast_verify;
mod hardening_daemon;
mod hardening_memory;
mod hardening_payload;
mod hardening_trust;
mod interop;
mod nats_remaphore;
mod newcomer;
mod package;
mod process_options;
mod prometheus;
mod prune;
mod prune_gaps;
mod reliability_common;
mod reliability_disk;
mod reliability_faults;
mod reliability_hostile;
mod reliability_load;
mod reliability_order;
mod reliability_procs;
mod reliability_strace;
mod s3_upload;
mod security;
mod security_sweep;
mod status_attention;
mod sync;
mod transport_dir;
mod transport_nats;
mod transport_s3;
mod transport_ssh;
mod tutorial;
mod two_binaries;
mod vectors;
mod write_verify;
