bootstrap_expect = 3
client_addr = "0.0.0.0"
bind_addr = "192.168.122.150"
datacenter = "KE-DC"
data_dir = "/var/lib/consul"
domain = "consul"
enable_script_checks = true
dns_config {
  enable_truncate = true
  only_passing = true
}
enable_syslog = true
encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="
leave_on_terminate = true
log_level = "INFO"
rejoin_after_leave = true
retry_join = ["consul01", "consul02", "consul03"]
server = true
start_join = ["consul01", "consul02", "consul03"]
ui = true
