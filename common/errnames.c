#include "common/errnames.h"
#include <errno.h>
#include <stddef.h>
#include <string.h>

static const struct {
	int err;
	const char *name;
} names[] = {
#define E(x) { x, #x }
	E(EPERM), E(ENOENT), E(ESRCH), E(EINTR), E(EIO), E(ENXIO), E(E2BIG), E(EBADF),
	E(EAGAIN), E(ENOMEM), E(EACCES), E(EFAULT), E(EBUSY), E(EEXIST), E(EXDEV), E(ENODEV),
	E(ENOTDIR), E(EISDIR), E(EINVAL), E(ENFILE), E(EMFILE), E(ETXTBSY), E(EFBIG), E(ENOSPC),
	E(ESPIPE), E(EROFS), E(EMLINK), E(EPIPE), E(ERANGE), E(ENAMETOOLONG), E(ENOSYS),
	E(ENOTEMPTY), E(ELOOP), E(ENODATA), E(EOVERFLOW), E(EOPNOTSUPP), E(ENOTCONN),
	E(ETIMEDOUT), E(ECONNREFUSED), E(ECANCELED), E(EDQUOT), E(ESTALE), E(EPROTO),
	E(EBADMSG), E(EMSGSIZE), E(ENOTSUP),
#undef E
};

const char *errno_name(int err)
{
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (names[i].err == err)
			return names[i].name;
	return NULL;
}

int errno_from_name(const char *name)
{
	if (!name)
		return 0;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(names[i].name, name) == 0)
			return names[i].err;
	return 0;
}

/* First match wins in both directions, so the preferred code for an errno comes first. */
static const struct {
	int err;
	const char *code;
	int status;
} codes[] = {
	{ ENOENT, "FILE_NOT_FOUND", 404 },
	{ EEXIST, "FILE_EXISTS", 409 },
	{ ENOTDIR, "NOT_DIRECTORY", 400 },
	{ EISDIR, "IS_DIRECTORY", 400 },
	{ ENOTEMPTY, "DIRECTORY_NOT_EMPTY", 409 },
	{ EACCES, "PERMISSION_DENIED", 403 },
	{ EPERM, "PERMISSION_DENIED", 403 },
	{ EROFS, "READ_ONLY", 403 },
	{ ENAMETOOLONG, "NAME_TOO_LONG", 400 },
	{ EFBIG, "FILE_TOO_LARGE", 413 },
	{ EINVAL, "VALIDATION_FAILED", 400 },
	{ EBUSY, "RESOURCE_BUSY", 409 },
	{ ENOSPC, "NO_SPACE", 507 },
	{ EXDEV, "CROSS_DEVICE", 400 },
	{ ELOOP, "TOO_MANY_LINKS", 400 },
	{ ENOSYS, "NOT_SUPPORTED", 501 },
	{ EOPNOTSUPP, "NOT_SUPPORTED", 501 },
	{ ENOENT, "PROCESS_NOT_FOUND", 404 },
	{ ENOENT, "CONTEXT_NOT_FOUND", 404 },
	{ ENOENT, "COMMAND_NOT_FOUND", 404 },
	{ EINVAL, "INVALID_COMMAND", 400 },
	{ EAGAIN, "INTERPRETER_NOT_READY", 503 },
	{ ETIMEDOUT, "TIMEOUT", 504 },
};

const char *errno_to_code(int err, int *status)
{
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
		if (codes[i].err == err) {
			if (status)
				*status = codes[i].status;
			return codes[i].code;
		}
	if (status)
		*status = 500;
	return "FILESYSTEM_ERROR";
}

int errno_from_api_error(const char *errno_field, const char *code, long http_status)
{
	int e = errno_from_name(errno_field);
	if (e)
		return e;
	if (code)
		for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
			if (strcmp(codes[i].code, code) == 0)
				return codes[i].err;
	switch (http_status) {
	case 400: return EINVAL;
	case 401:
	case 403: return EACCES;
	case 404: return ENOENT;
	case 409: return EEXIST;
	case 413: return EFBIG;
	case 429: return EAGAIN;
	case 501: return ENOSYS;
	case 503: return EAGAIN;
	case 504: return ETIMEDOUT;
	default: return EIO;
	}
}
