{
  "targets": [
    {
      "target_name": "blockmirror_native",
      "sources": ["native/blockmirror_native.c", "native/log_syncer.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
