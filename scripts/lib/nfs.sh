# Shell helpers to run nfs-ganesha (NFSv3 + NFSv4.1) in a network namespace of its own, with a
# private config, export, log and recovery directory: the same setup as test_support::ganesha.
# Source this file; then:
#   nfs_start NAMESPACE DIR    # creates NAMESPACE, serves DIR/export at 10.251.0.1
#   nfs_stop NAMESPACE DIR     # stops the server and deletes NAMESPACE
#   nfs_stop_server DIR / nfs_start_server NAMESPACE DIR: stop and restart just the server
# The server's clients run inside NAMESPACE (ip netns exec NAMESPACE ...).

NFS_ADDRESS=10.251.0.1

nfs_start() {
  local ns=$1 dir=$2
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add nfs0 type veth peer name nfs1
  ip -n "$ns" addr add "$NFS_ADDRESS/24" dev nfs0
  ip -n "$ns" link set nfs0 up
  ip -n "$ns" link set nfs1 up
  nfs_start_server "$ns" "$dir"
}

# Starts ganesha (again) in an existing namespace made by nfs_start.
nfs_start_server() {
  local ns=$1 dir=$2
  mkdir -p "$dir/export" "$dir/recovery"
  cat > "$dir/ganesha.conf" <<CONF
NFS_CORE_PARAM {
    Protocols = 3, 4;
    NFS_Port = 2049;
    MNT_Port = 20048;
    Bind_addr = $NFS_ADDRESS;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}
NFSV4 {
    Only_Numeric_Owners = true;
    Graceless = true;
    Minor_Versions = 1, 2;
    RecoveryBackend = fs;
    RecoveryRoot = $dir/recovery;
}
EXPORT {
    Export_Id = 1;
    Path = $dir/export;
    Pseudo = $dir/export;
    Access_Type = RW;
    Squash = None;
    Protocols = 3, 4;
    SecType = sys;
    # Files are also made behind the server's back (tests): no cached attributes.
    Attr_Expiration_Time = 0;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = WARN; }
CONF
  # rpcbind's socket lives in /run: a private tmpfs keeps it off the host.
  ip netns exec "$ns" unshare -m --propagation private sh -c "
    mount -t tmpfs none /run || exit 1
    rpcbind -f -w & rp=\$!
    ganesha.nfsd -F -f $dir/ganesha.conf -L $dir/ganesha.log -p $dir/ganesha.pid & gp=\$!
    trap 'kill -TERM \$gp; wait \$gp; kill -TERM \$rp; wait \$rp' TERM
    wait \$gp" >/dev/null 2>&1 &
  echo $! > "$dir/server.pid"
  local deadline=$((SECONDS + 30))
  until ip netns exec "$ns" bash -c "exec 3<>/dev/tcp/$NFS_ADDRESS/2049" 2>/dev/null &&
        ip netns exec "$ns" rpcinfo -p 127.0.0.1 2>/dev/null | grep -q mountd; do
    if [ $SECONDS -ge $deadline ]; then
      echo "nfs-ganesha did not start; its log:" >&2
      cat "$dir/ganesha.log" >&2
      return 1
    fi
    sleep 0.1
  done
  sleep 0.3
}

# Stops ganesha and rpcbind; the namespace stays.
nfs_stop_server() {
  local dir=$1 pid
  [ -f "$dir/server.pid" ] || return 0
  pid=$(cat "$dir/server.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$dir/server.pid"
}

nfs_stop() {
  local ns=$1 dir=$2 pid
  nfs_stop_server "$dir"
  if ip netns list | grep -qw "$ns"; then
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns"
  fi
}
