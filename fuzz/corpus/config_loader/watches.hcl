data_dir = "/tmp/x"
watches = [
  { type = "key", key = "web/config", handler_type = "script", args = ["/bin/true"] },
  { type = "keyprefix", prefix = "web/", handler = "echo ${HOME}" },
]
