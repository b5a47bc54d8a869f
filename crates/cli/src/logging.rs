//! Log lines on stderr: `fspl: warning: message key=value ...`. Each event
//! is exactly one line: control characters in the message or the fields
//! (a file name with a newline or an escape sequence in it, text from a
//! job) are shown escaped (`\n`, `\x1b`), so no job can forge a line.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

struct OneLine;

impl<S, N> FormatEvent<S, N> for OneLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        // The fields are formatted first so that the ` (os error N)` of
        // system errors can be left out, as in error lines, and control
        // characters (from file names, job data) escaped.
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        writeln!(
            w,
            "fspl: {level}: {}",
            fspl_queue::escape_controls(&fspl_queue::strip_os_errors(&fields))
        )
    }
}

pub fn init(level: Level) {
    use tracing_subscriber::prelude::*;
    // Client libraries' own events (async-nats logs a refused connection
    // at level error) only when debugging: their failures are reported
    // once, as fspl's error line.
    let verbose = level >= Level::DEBUG;
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(OneLine)
        .finish()
        .with(tracing_subscriber::filter::filter_fn(move |m| {
            verbose || !m.target().starts_with("async_nats")
        }))
        .try_init();
}
