package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tallyauth/tally/node"
)

// serveFile is the configuration file of "tally serve --config FILE": JSON
// with the flags' names in snake_case. Unknown keys are an error. Values
// set here are overridden by environment variables and flags.
type serveFile struct {
	Dev            *bool         `json:"dev"`
	NodeID         *string       `json:"node_id"`
	Region         *string       `json:"region"`
	DataDir        *string       `json:"data_dir"`
	Listen         *string       `json:"listen"`
	Issuer         *string       `json:"issuer"`
	RaftBind       *string       `json:"raft_bind"`
	RaftAdvertise  *string       `json:"raft_advertise"`
	RaftProfile    *string       `json:"raft_profile"`
	Peers          []filePeer    `json:"peers"`
	Join           *string       `json:"join"`
	Nonvoter       *bool         `json:"nonvoter"`
	MaxStale       *fileDuration `json:"max_stale"`
	MaxClockSkew   *fileDuration `json:"max_clock_skew"`
	TLSDir         *string       `json:"tls_dir"`
	LeaderRegion   *string       `json:"leader_region"`
	NATSListen     *string       `json:"nats_listen"`
	NATSURL        *string       `json:"nats_url"`
	KEKFile        *string       `json:"kek_file"`
	AdminTokenFile *string       `json:"admin_token_file"`
	OTLPEndpoint   *string       `json:"otlp_endpoint"`
	MetricsListen  *string       `json:"metrics_listen"`
	JWKSMaxAge     *fileDuration `json:"jwks_max_age"`
	KeyPublish     *fileDuration `json:"key_publish_delay"`
	SweepInterval  *fileDuration `json:"sweep_interval"`
	WriteTimeout   *fileDuration `json:"write_timeout"`
	RefreshTTL     *fileDuration `json:"refresh_ttl"`
	RefreshIdle    *fileDuration `json:"refresh_idle_timeout"`
	RefreshReuse   *fileDuration `json:"refresh_reuse_interval"`
	SigningAlg     *string       `json:"signing_alg"`
	LogLevel       *string       `json:"log_level"`
	MinFreeDisk    *fileByteSize `json:"min_free_disk"`

	NATSClusterListen   *string  `json:"nats_cluster_listen"`
	NATSRoutes          []string `json:"nats_routes"`
	EventStreamReplicas *int     `json:"event_stream_replicas"`
}

type filePeer struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Nonvoter bool   `json:"nonvoter"`
}

// fileDuration is a duration written as a Go duration string ("5s").
type fileDuration time.Duration

func (d *fileDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"5s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = fileDuration(v)
	return nil
}

// fileByteSize is a byte count written as a number or as a string with an
// optional binary suffix ("256MiB").
type fileByteSize uint64

func (b *fileByteSize) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n uint64
		if nerr := json.Unmarshal(data, &n); nerr != nil {
			return fmt.Errorf("want a byte size like \"256MiB\" or a number of bytes: %w", err)
		}
		*b = fileByteSize(n)
		return nil
	}
	v, err := node.ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = fileByteSize(v)
	return nil
}

// byteSizeFlag is a flag holding a byte count ("256MiB"; see
// node.ParseByteSize).
type byteSizeFlag struct{ v *uint64 }

func (f byteSizeFlag) String() string {
	if f.v == nil {
		return ""
	}
	return node.FormatByteSize(*f.v)
}

func (f byteSizeFlag) Set(s string) error {
	v, err := node.ParseByteSize(s)
	if err != nil {
		return err
	}
	*f.v = v
	return nil
}

// maxConfigBytes bounds the configuration file.
const maxConfigBytes = 1 << 20

// loadServeFile reads path into cfg (and the log level). Unknown keys,
// trailing data and type mismatches are errors.
func loadServeFile(path string, cfg *node.Config, logLevel *string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return err
	}
	if len(data) > maxConfigBytes {
		return fmt.Errorf("%s is larger than %d bytes", path, maxConfigBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sf serveFile
	if err := dec.Decode(&sf); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: trailing data after the JSON object", path)
	}
	setStr := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	setDur := func(dst *time.Duration, v *fileDuration) {
		if v != nil {
			*dst = time.Duration(*v)
		}
	}
	if sf.Dev != nil {
		cfg.Dev = *sf.Dev
	}
	if sf.Nonvoter != nil {
		cfg.Nonvoter = *sf.Nonvoter
	}
	setStr(&cfg.NodeID, sf.NodeID)
	setStr(&cfg.Region, sf.Region)
	setStr(&cfg.DataDir, sf.DataDir)
	setStr(&cfg.Listen, sf.Listen)
	setStr(&cfg.Issuer, sf.Issuer)
	setStr(&cfg.RaftBind, sf.RaftBind)
	setStr(&cfg.RaftAdvertise, sf.RaftAdvertise)
	setStr(&cfg.RaftProfile, sf.RaftProfile)
	setStr(&cfg.Join, sf.Join)
	setStr(&cfg.TLSDir, sf.TLSDir)
	setStr(&cfg.LeaderRegion, sf.LeaderRegion)
	setStr(&cfg.NATSListen, sf.NATSListen)
	setStr(&cfg.Events.NATSURL, sf.NATSURL)
	setStr(&cfg.KEKFile, sf.KEKFile)
	setStr(&cfg.AdminTokenFile, sf.AdminTokenFile)
	setStr(&cfg.OTLPEndpoint, sf.OTLPEndpoint)
	setStr(&cfg.MetricsListen, sf.MetricsListen)
	setStr(&cfg.DefaultSigningAlg, sf.SigningAlg)
	setStr(logLevel, sf.LogLevel)
	setDur(&cfg.MaxStale, sf.MaxStale)
	setDur(&cfg.MaxClockSkew, sf.MaxClockSkew)
	setDur(&cfg.JWKSMaxAge, sf.JWKSMaxAge)
	setDur(&cfg.KeyPublishDelay, sf.KeyPublish)
	setDur(&cfg.SweepInterval, sf.SweepInterval)
	setDur(&cfg.RefreshTTL, sf.RefreshTTL)
	setDur(&cfg.RefreshIdleTimeout, sf.RefreshIdle)
	setDur(&cfg.RefreshReuseInterval, sf.RefreshReuse)
	setDur(&cfg.WriteTimeout, sf.WriteTimeout)
	if sf.MinFreeDisk != nil {
		cfg.MinFreeDisk = uint64(*sf.MinFreeDisk)
	}
	setStr(&cfg.NATSClusterListen, sf.NATSClusterListen)
	if sf.NATSRoutes != nil {
		cfg.NATSRoutes = sf.NATSRoutes
	}
	if sf.EventStreamReplicas != nil {
		cfg.Events.StreamReplicas = *sf.EventStreamReplicas
	}
	if sf.Peers != nil {
		cfg.Peers = nil
		for _, p := range sf.Peers {
			cfg.Peers = append(cfg.Peers, node.Peer(p))
		}
	}
	return nil
}

// configArg finds --config FILE (or -config, =FILE) among args before flag
// parsing, so the file can set the flags' defaults.
func configArg(args []string) (string, bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if hasVal {
			return val, true
		}
		if i+1 < len(args) {
			return args[i+1], true
		}
		return "", true
	}
	return "", false
}

// peersFlag is --peers "id=host:port,id=host:port".
type peersFlag struct{ peers *[]node.Peer }

func (p peersFlag) String() string {
	if p.peers == nil {
		return ""
	}
	var parts []string
	for _, x := range *p.peers {
		parts = append(parts, x.ID+"="+x.RaftAddr)
	}
	return strings.Join(parts, ",")
}

func (p peersFlag) Set(v string) error {
	var out []node.Peer
	for part := range strings.SplitSeq(v, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		if !ok || id == "" || addr == "" {
			return fmt.Errorf("peer %q: want id=host:port", part)
		}
		out = append(out, node.Peer{ID: id, RaftAddr: addr})
	}
	*p.peers = out
	return nil
}
