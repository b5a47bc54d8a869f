//! Log lines on stderr: `fspl: warning: message key=value ...`. Each event
//! is exactly one line: control characters in the message or the fields
//! (a file name with a newline or an escape sequence in it, text from a
//! job) are shown escaped (`\n`, `\x1b`), so no job can forge a line.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

struct OneLine {
    level: Level,
}

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
        // Libraries' chatter (object_store's "backing off, retry 1 of 3")
        // is debug output for us: the error that ends the retries says it.
        let target = event.metadata().target();
        if *event.metadata().level() >= Level::INFO
            && self.level < Level::DEBUG
            && !target.starts_with("fspl")
        {
            return Ok(());
        }
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
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(OneLine { level })
        .try_init();
}
