package node

import (
	"context"
	"encoding/hex"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// The audit log (issue 13): every admin and cluster-admin call that changes
// something, or was refused the change, is appended by adminGuard
// (admincred.go) as one AppendAudit command; the FSM chains the records
// (raft/apply_threat.go) and announces each one on the event log
// (EVENT_KIND_ADMIN_AUDIT). ListAudit and VerifyAudit read this node's
// replica.

// maxAuditPage bounds one ListAudit answer.
const maxAuditPage = 1000

// AuditRecordPB is the admin API form of a stored audit record.
func AuditRecordPB(r *raftpb.AuditRecord) *adminv1.AuditRecord {
	return &adminv1.AuditRecord{
		Seq: r.Seq, Time: ts(r.TimeUnixNano), Actor: r.Actor, Role: r.Role, Action: r.Action,
		Target: r.Target, Tenant: r.Tenant, Outcome: r.Outcome, Node: r.Node, RaftIndex: r.RaftIndex,
		PrevHash: hex.EncodeToString(r.PrevHash), Hash: hex.EncodeToString(r.Hash),
	}
}

func (a *adminService) ListAudit(ctx context.Context, req *connect.Request[adminv1.ListAuditRequest]) (*connect.Response[adminv1.ListAuditResponse], error) {
	tenant := req.Msg.Tenant
	if p, ok := principalFrom(ctx); ok && p.role == raft.RoleTenantAdmin {
		if tenant != "" && tenant != p.tenant {
			return nil, connect.NewError(connect.CodePermissionDenied, errNotYourTenant(p.tenant))
		}
		tenant = p.tenant
	}
	limit := int(req.Msg.Limit)
	if limit <= 0 || limit > maxAuditPage {
		limit = maxAuditPage
	}
	recs, err := a.rep.rn.FSM().AuditRecords(req.Msg.AfterSeq, limit, tenant)
	if err != nil {
		return nil, connectError(err)
	}
	out := make([]*adminv1.AuditRecord, 0, len(recs))
	for _, r := range recs {
		out = append(out, AuditRecordPB(r))
	}
	return connect.NewResponse(&adminv1.ListAuditResponse{Records: out}), nil
}

func (a *adminService) VerifyAudit(context.Context, *connect.Request[adminv1.VerifyAuditRequest]) (*connect.Response[adminv1.VerifyAuditResponse], error) {
	recs, err := a.rep.rn.FSM().AuditRecords(0, 0, "")
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(VerifyAuditRecords(recs)), nil
}

// VerifyAuditRecords checks a whole chain (see raft.VerifyAuditChain).
func VerifyAuditRecords(recs []*raftpb.AuditRecord) *adminv1.VerifyAuditResponse {
	res := &adminv1.VerifyAuditResponse{Intact: true, Records: uint64(len(recs))}
	if b := raft.VerifyAuditChain(recs); b != nil {
		res.Intact, res.FirstBrokenSeq, res.Reason = false, b.Seq, b.Reason
	} else if len(recs) > 0 {
		res.HeadHash = hex.EncodeToString(recs[len(recs)-1].Hash)
	}
	return res
}

type errNotYourTenant string

func (e errNotYourTenant) Error() string { return "role tenant-admin: limited to tenant " + string(e) }
