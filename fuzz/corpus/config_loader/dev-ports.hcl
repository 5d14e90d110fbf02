node_name = "n1"
ports {
  http = 8500
  dns  = -1
}
addresses { dns = "127.0.0.1 ::1" }
limits { kv_max_value_size = 1024 }
performance { raft_multiplier = 1 }
default_query_time = "30s"
max_query_time = "1m30s"
