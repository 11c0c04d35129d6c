{
  "targets": [
    {
      "target_name": "blockmirror_native",
      "sources": ["native/blockmirror_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
