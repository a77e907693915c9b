#include "common/log.h"
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

static const char *prog = "sbx";
static enum log_level current = LOG_LVL_INFO;
static bool to_syslog;

void log_init(const char *progname, enum log_level level, bool use_syslog)
{
	prog = progname;
	current = level;
	to_syslog = use_syslog;
	if (use_syslog)
		openlog(progname, LOG_PID, LOG_DAEMON);
}

void log_set_level(enum log_level level) { current = level; }
bool log_enabled(enum log_level level) { return level <= current; }

void log_msg(enum log_level level, const char *fmt, ...)
{
	static const char *const tag[] = { "error", "warning", "info", "debug" };
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	if (level > current)
		return;
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (to_syslog) {
		syslog(prio[level], "%s", line);
		return;
	}
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	fprintf(stderr, "%02d:%02d:%02d.%03ld %s: %s: %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
		ts.tv_nsec / 1000000, prog, tag[level], line);
}
