# Included from tests/CMakeLists.txt, so it is part of every `make test`
# build whatever the compiler: each fuzz/fuzz_<name>.c is linked with
# fuzz/replay_main.c instead of libFuzzer into replay_<name>, and the ctest
# fuzz_replay_<name> runs it once over every input in fuzz/corpus/<name>/.
file(GLOB TERN_FUZZ_REPLAY_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/fuzz/fuzz_*.c)
# A harness that includes tern/crypto.h or transport/ needs crypto/ and
# libsodium (transport/ is built with crypto/): with
# TERN_CRYPTO=OFF it is neither built nor registered.
foreach(src ${TERN_FUZZ_REPLAY_SOURCES})
  get_filename_component(prog ${src} NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" name ${prog})
  file(STRINGS ${src} needs_crypto REGEX "^#include \"(tern/crypto|transport/)")
  if(needs_crypto AND NOT TERN_CRYPTO)
    message(STATUS "fuzz_replay_${name}: skipped (TERN_CRYPTO=OFF)")
    continue()
  endif()
  add_executable(replay_${name} ${src} ${PROJECT_SOURCE_DIR}/fuzz/replay_main.c)
  target_link_libraries(replay_${name} PRIVATE tern_static)
  add_test(NAME fuzz_replay_${name}
    COMMAND replay_${name} ${PROJECT_SOURCE_DIR}/fuzz/corpus/${name})
  set_tests_properties(fuzz_replay_${name} PROPERTIES TIMEOUT 300)
endforeach()

# tern-tunnel's option model lives in tools/ (with jansson).
if(TARGET replay_tunnel_config)
  target_link_libraries(replay_tunnel_config PRIVATE tern_tunnel_config)
endif()
