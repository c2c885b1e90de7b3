#include "tern/error.h"

const char *tern_strerror(int err)
{
    switch (err) {
#define TERN_ERR_MSG_(name, value, msg) \
    case value:                         \
        return msg;
        TERN_ERRNO_MAP(TERN_ERR_MSG_)
#undef TERN_ERR_MSG_
    case 0:
        return "success";
    default:
        return "unknown error";
    }
}

const char *tern_err_name(int err)
{
    switch (err) {
#define TERN_ERR_NAME_(name, value, msg) \
    case value:                          \
        return #name;
        TERN_ERRNO_MAP(TERN_ERR_NAME_)
#undef TERN_ERR_NAME_
    case 0:
        return "OK";
    default:
        return "UNKNOWN";
    }
}
