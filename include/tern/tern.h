/* tern: fast, secure, reliable transport over UDP. The umbrella header. */
#ifndef TERN_H
#define TERN_H

#include "common.h"
#include "crypto.h"
#include "error.h"
#include "kcp.h"
#include "netsim.h"
#include "transport.h"

#define TERN_VERSION_MAJOR 0
#define TERN_VERSION_MINOR 1
#define TERN_VERSION_PATCH 0
#define TERN_VERSION_STRING "0.1.0"

#endif /* TERN_H */
