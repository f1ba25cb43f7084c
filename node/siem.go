package node

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// SIEM export (issue 13): the security and audit events of the event log,
// as JSON lines in one schema whose field names follow OCSF 1.x
// (Authentication 3002, Account Change 3001, API Activity 6003, Detection
// Finding 2004), written to a file or stdout (Config.SIEMFile, tally serve
// --siem-file). The same events stay on the NATS subjects as SETs.
//
// Delivery is at least once: the exporter reads the Raft outbox (so every
// node exports every event of the cluster), writes and syncs a batch, then
// records its position in <data-dir>/siem-position; after a crash the last
// batch is written again. metadata.uid ("<cluster>-<index>-<ordinal>", the
// SET jti) is the de-duplication key, also across nodes. No event holds a
// secret or a token: only ids (jti, client id, subject, family id).

// SIEMSchemaVersion is metadata.version of the exported lines.
const SIEMSchemaVersion = "1.1.0"

const siemPositionFile = "siem-position"

// SIEMEvent is one exported line.
type SIEMEvent struct {
	// OCSF classification.
	ClassUID     int    `json:"class_uid"`
	ClassName    string `json:"class_name"`
	CategoryUID  int    `json:"category_uid"`
	CategoryName string `json:"category_name"`
	ActivityID   int    `json:"activity_id"`
	ActivityName string `json:"activity_name"`
	TypeUID      int    `json:"type_uid"`
	SeverityID   int    `json:"severity_id"`
	Severity     string `json:"severity"`
	StatusID     int    `json:"status_id"`
	Status       string `json:"status"`
	StatusDetail string `json:"status_detail,omitempty"`
	// Time is OCSF's epoch milliseconds; TimeDT the same in RFC 3339.
	Time     int64        `json:"time"`
	TimeDT   string       `json:"time_dt"`
	Message  string       `json:"message"`
	Metadata SIEMMetadata `json:"metadata"`
	Actor    *SIEMActor   `json:"actor,omitempty"`
	User     *SIEMUser    `json:"user,omitempty"`
	API      *SIEMAPI     `json:"api,omitempty"`
	// SrcEndpoint is where an alert's traffic came from (an address or a
	// subnet).
	SrcEndpoint *SIEMEndpoint `json:"src_endpoint,omitempty"`
	// FindingInfo names a Detection Finding (security alerts).
	FindingInfo *SIEMFinding `json:"finding_info,omitempty"`
	// Unmapped holds tally's own fields (tenant, client, family, jti,
	// audit chain hash...).
	Unmapped map[string]any `json:"unmapped,omitempty"`
}

// SIEMMetadata is OCSF metadata: uid is the de-duplication key.
type SIEMMetadata struct {
	UID        string      `json:"uid"`
	Version    string      `json:"version"`
	Product    SIEMProduct `json:"product"`
	TenantUID  string      `json:"tenant_uid,omitempty"`
	Sequence   uint64      `json:"sequence"`
	LoggedTime int64       `json:"logged_time"`
}

type SIEMProduct struct {
	Name       string `json:"name"`
	VendorName string `json:"vendor_name"`
}

type SIEMActor struct {
	User *SIEMUser `json:"user,omitempty"`
	App  string    `json:"app_name,omitempty"`
}

type SIEMUser struct {
	UID  string `json:"uid,omitempty"`
	Name string `json:"name,omitempty"`
	Type string `json:"type,omitempty"`
}

// SIEMEndpoint is OCSF's network endpoint: ip for an address, subnet_uid
// for a subnet.
type SIEMEndpoint struct {
	IP     string `json:"ip,omitempty"`
	Subnet string `json:"subnet_uid,omitempty"`
}

// SIEMFinding is OCSF's finding_info: uid (the event id), title and the
// detector's name in types.
type SIEMFinding struct {
	UID   string   `json:"uid"`
	Title string   `json:"title"`
	Types []string `json:"types"`
}

type SIEMAPI struct {
	Operation string `json:"operation"`
	Service   string `json:"service_name,omitempty"`
}

// SIEMFromEvent maps an outbox event to the export schema; ok is false for
// a kind that is not exported.
func SIEMFromEvent(cluster string, ev *raftpb.Event, now time.Time) (SIEMEvent, bool) {
	e := newSIEMEvent(cluster, ev, now)
	switch ev.Kind {
	case raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED:
		e.auth(2, "Logoff")
		r := ev.GetRevocation()
		e.setUnmapped("jti", r.GetJti())
		e.setUnmapped("client_id", r.GetClientId())
		e.setUnmapped("reason", r.GetReason())
		if r.GetSubject() != "" {
			e.User = &SIEMUser{UID: r.GetSubject()}
		}
		e.Message = "token revoked"
	case raftpb.EventKind_EVENT_KIND_FAMILY_REVOKED:
		e.auth(2, "Logoff")
		e.Message = "refresh-token family revoked"
	case raftpb.EventKind_EVENT_KIND_REUSE_DETECTED:
		e.detectionFinding()
		e.setUnmapped("node", ev.Node)
		e.setUnmapped("region", ev.Region)
		e.Message = "refresh-token reuse detected; family revoked"
	case raftpb.EventKind_EVENT_KIND_USER_LOCKED:
		e.account(9, "Lock")
		e.SeverityID, e.Severity = 3, "Medium"
		e.Message = "user locked or disabled"
	case raftpb.EventKind_EVENT_KIND_USER_UNLOCKED:
		e.account(99, "Unlock")
		e.Message = "user enabled again"
	case raftpb.EventKind_EVENT_KIND_CLIENT_DISABLED:
		e.account(5, "Disable")
		e.Actor = &SIEMActor{App: ev.ClientId}
		e.Message = "client disabled"
	case raftpb.EventKind_EVENT_KIND_CLIENT_ENABLED:
		e.account(2, "Enable")
		e.Actor = &SIEMActor{App: ev.ClientId}
		e.Message = "client enabled"
	case raftpb.EventKind_EVENT_KIND_KEY_ROTATED:
		e.CategoryUID, e.CategoryName = 6, "Application Activity"
		e.ClassUID, e.ClassName, e.ActivityID, e.ActivityName = 6003, "API Activity", 3, "Update"
		e.Unmapped["kids"] = ev.Kids
		e.Message = "signing keys added"
	case raftpb.EventKind_EVENT_KIND_ADMIN_AUDIT:
		e.mapAudit(ev.GetAudit())
	case raftpb.EventKind_EVENT_KIND_SECURITY_ALERT:
		e.mapAlert(ev.GetAlert())
	default:
		return SIEMEvent{}, false
	}
	e.TypeUID = e.ClassUID*100 + e.ActivityID
	return e, true
}

// newSIEMEvent is the part of ev's line that every kind shares: an
// informational success in Identity & Access Management at ev's time,
// its metadata (uid "<cluster>-<index>-<ordinal>", logged at now), the
// tenant, Raft index, client and family in unmapped, and ev's subject as
// the user. SIEMFromEvent fills in the class, activity and message.
func newSIEMEvent(cluster string, ev *raftpb.Event, now time.Time) SIEMEvent {
	t := time.Unix(0, ev.TimeUnixNano).UTC()
	e := SIEMEvent{
		CategoryUID: 3, CategoryName: "Identity & Access Management",
		SeverityID: 1, Severity: "Informational", StatusID: 1, Status: "Success",
		Time: t.UnixMilli(), TimeDT: t.Format(time.RFC3339Nano),
		Metadata: SIEMMetadata{
			UID: fmt.Sprintf("%s-%d-%d", cluster, ev.Index, ev.Ordinal), Version: SIEMSchemaVersion,
			Product: SIEMProduct{Name: "tally", VendorName: "tally"}, TenantUID: ev.Tenant, Sequence: ev.Index,
			LoggedTime: now.UnixMilli(),
		},
		Unmapped: map[string]any{"tenant": ev.Tenant, "raft_index": ev.Index},
	}
	e.setUnmapped("client_id", ev.ClientId)
	e.setUnmapped("family_id", ev.FamilyId)
	if ev.Subject != "" {
		e.User = &SIEMUser{UID: ev.Subject}
	}
	return e
}

// setUnmapped sets e.Unmapped[k] to v unless v is empty.
func (e *SIEMEvent) setUnmapped(k, v string) {
	if v != "" {
		e.Unmapped[k] = v
	}
}

// account classifies e as an OCSF Account Change (3001) with the given
// activity.
func (e *SIEMEvent) account(activity int, name string) {
	e.ClassUID, e.ClassName, e.ActivityID, e.ActivityName = 3001, "Account Change", activity, name
}

// auth classifies e as an OCSF Authentication (3002) with the given
// activity.
func (e *SIEMEvent) auth(activity int, name string) {
	e.ClassUID, e.ClassName, e.ActivityID, e.ActivityName = 3002, "Authentication", activity, name
}

// detectionFinding classifies e as a high-severity OCSF Detection Finding
// (2004, activity Create) in the Findings category.
func (e *SIEMEvent) detectionFinding() {
	e.CategoryUID, e.CategoryName = 2, "Findings"
	e.ClassUID, e.ClassName, e.ActivityID, e.ActivityName = 2004, "Detection Finding", 1, "Create"
	e.SeverityID, e.Severity = 4, "High"
}

// mapAudit fills in e for an admin audit record: an OCSF API Activity
// (6003) of service tally.admin whose activity follows the action's verb
// (auditActivity), the actor and role, the record's tenant, target, node,
// sequence and chain hash, and a medium-severity failure for any outcome
// but "success".
func (e *SIEMEvent) mapAudit(a *raftpb.AuditRecord) {
	e.CategoryUID, e.CategoryName = 6, "Application Activity"
	e.ClassUID, e.ClassName = 6003, "API Activity"
	e.ActivityID, e.ActivityName = auditActivity(a.GetAction())
	e.Actor = &SIEMActor{User: &SIEMUser{Name: a.GetActor(), Type: a.GetRole()}}
	e.API = &SIEMAPI{Operation: a.GetAction(), Service: "tally.admin"}
	e.Metadata.TenantUID = a.GetTenant()
	e.Unmapped["tenant"] = a.GetTenant()
	e.setUnmapped("target", a.GetTarget())
	e.setUnmapped("node", a.GetNode())
	e.Unmapped["audit_seq"] = a.GetSeq()
	e.Unmapped["audit_hash"] = hex.EncodeToString(a.GetHash())
	if a.GetOutcome() != "success" {
		e.StatusID, e.Status, e.StatusDetail = 2, "Failure", a.GetOutcome()
		e.SeverityID, e.Severity = 3, "Medium"
	}
	e.Message = a.GetActor() + " " + a.GetAction() + " " + a.GetTarget() + ": " + a.GetOutcome()
}

// mapAlert fills in e for a security alert: a Detection Finding (high
// severity, medium for rate_limit_exceeded) named by the alert's kind, the
// source address or subnet as src_endpoint, the alert's signal, node,
// region, count and window in unmapped, and a message; the threat_v3 kinds
// (raft/apply_threat3.go) add their own fields and message.
func (e *SIEMEvent) mapAlert(a *raftpb.SecurityAlert) {
	e.detectionFinding()
	if a.GetKind() == raft.AlertRateLimitExceeded {
		e.SeverityID, e.Severity = 3, "Medium"
	}
	e.FindingInfo = &SIEMFinding{UID: e.Metadata.UID, Title: strings.ReplaceAll(a.GetKind(), "_", " "), Types: []string{a.GetKind()}}
	if src := a.GetSource(); strings.Contains(src, "/") {
		e.SrcEndpoint = &SIEMEndpoint{Subnet: src}
	} else if src != "" {
		e.SrcEndpoint = &SIEMEndpoint{IP: src}
	}
	e.Unmapped["alert"] = a.GetKind()
	e.setUnmapped("signal", a.GetSignal())
	e.setUnmapped("node", a.GetNode())
	e.setUnmapped("region", a.GetRegion())
	e.Unmapped["count"] = a.GetCount()
	e.Unmapped["window_seconds"] = a.GetWindowSeconds()
	e.Message = fmt.Sprintf("%s: %d in %d s (%s)", strings.ReplaceAll(a.GetKind(), "_", " "), a.GetCount(), a.GetWindowSeconds(), a.GetSignal())
	switch a.GetKind() {
	case raft.AlertScopeFirstUse:
		e.setUnmapped("scope", a.GetScope())
		e.Message = fmt.Sprintf("scope first use: client %s was granted scope %q for the first time (%s)", a.GetClientId(), a.GetScope(), a.GetSignal())
	case raft.AlertRefreshImpossibleTravel:
		e.setUnmapped("previous_region", a.GetPreviousRegion())
		e.Unmapped["gap_seconds"] = a.GetGapNanos() / int64(time.Second)
		e.Message = fmt.Sprintf("refresh impossible travel: family rotated in %s %s after %s (window %d s)", a.GetRegion(),
			time.Duration(a.GetGapNanos()).Round(time.Second), a.GetPreviousRegion(), a.GetWindowSeconds())
	}
}

// auditActivity maps an admin action to an OCSF activity by how its
// method name (after the last ".") begins: Create or Add is Create (1),
// Revoke, Remove or Delete is Delete (4), anything else Update (3).
func auditActivity(action string) (int, string) {
	m := action[strings.LastIndex(action, ".")+1:]
	switch {
	case strings.HasPrefix(m, "Create"), strings.HasPrefix(m, "Add"):
		return 1, "Create"
	case strings.HasPrefix(m, "Revoke"), strings.HasPrefix(m, "Remove"), strings.HasPrefix(m, "Delete"):
		return 4, "Delete"
	default:
		return 3, "Update"
	}
}

// startSIEM starts the exporters: to Config.SIEMFile and to
// Config.SIEMSyslog (siem_syslog.go over TLS, or siem_relp.go over RELP
// with acknowledgements), each with its own position.
func (n *Node) startSIEM() error {
	var stops []func()
	n.threat.siemStop = func() {
		for _, s := range stops {
			s()
		}
	}
	cluster := n.cfg.Events.ClusterID
	if cluster == "" {
		cluster = "tally"
	}
	if n.cfg.SIEMFile != "" {
		var w io.Writer = os.Stdout
		var f *os.File
		if n.cfg.SIEMFile != "-" {
			var err error
			if f, err = os.OpenFile(n.cfg.SIEMFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600); err != nil {
				return fmt.Errorf("node: --siem-file: %w", err)
			}
			w = f
		}
		write := func(_ []SIEMEvent, lines [][]byte) error {
			bw := bufio.NewWriter(w)
			for _, l := range lines {
				bw.Write(append(l, '\n'))
			}
			err := bw.Flush()
			if f != nil && err == nil {
				err = f.Sync()
			}
			return err
		}
		stops = append(stops, n.runSIEMExport("siem", siemPositionFile, cluster, write, func() {
			if f != nil {
				f.Close()
			}
		}))
	}
	if n.cfg.SIEMSyslog != "" {
		sink, err := newSyslogSink(n.cfg)
		if err != nil {
			return err
		}
		stops = append(stops, n.runSIEMExport("siem-syslog", siemSyslogPositionFile, cluster, sink.write, sink.close))
	}
	return nil
}

// runSIEMExport follows the Raft outbox from the position saved in posFile
// and hands each batch to write; the position advances only after write
// succeeded (at least once). It returns the function that stops it.
func (n *Node) runSIEMExport(name, posFile, cluster string, write func([]SIEMEvent, [][]byte) error, closeSink func()) func() {
	posPath := filepath.Join(n.cfg.DataDir, posFile)
	pos := uint64(0)
	if b, err := os.ReadFile(posPath); err == nil {
		pos, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		defer closeSink()
		// Every 250 ms; after a failed write, twice as long each time up
		// to 5 s (a collector that is down is not hammered).
		const every, most = 250 * time.Millisecond, 5 * time.Second
		wait := every
		for {
			evs, err := n.raft.FSM().EventsSince(pos, 500)
			if errors.Is(err, raft.ErrClosed) {
				return
			}
			if errors.Is(err, raft.ErrEventsSwept) {
				n.log.Error(name+": events were swept before they were exported; skipping ahead", "after", pos)
				pos = n.raft.FSM().EventsSweptThrough()
				continue
			}
			if err == nil && len(evs) > 0 {
				var out []SIEMEvent
				var lines [][]byte
				for _, ev := range evs {
					if e, ok := SIEMFromEvent(cluster, ev, n.now()); ok {
						b, _ := json.Marshal(e)
						out, lines = append(out, e), append(lines, b)
					}
				}
				werr := error(nil)
				if len(lines) > 0 {
					werr = write(out, lines)
				}
				if werr != nil {
					n.log.Error(name+": write", "err", werr)
					wait = min(2*wait, most)
				} else {
					wait = every
					pos = evs[len(evs)-1].Index
					_ = os.WriteFile(posPath, []byte(strconv.FormatUint(pos, 10)+"\n"), 0o600)
				}
				if len(evs) >= 500 && werr == nil {
					continue
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(wait):
			}
		}
	}()
	return func() { close(stop); <-done }
}
