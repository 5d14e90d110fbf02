data_dir = "/tmp/x"
node_name = <<EOT
node-a
EOT
ports { http = 8000 + 500 }
log_level = upper("debug")
