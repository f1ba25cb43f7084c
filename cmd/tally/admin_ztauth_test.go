package main

import (
	"context"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func (f *fakeAdmin) SetTenantTrust(ctx context.Context, r *connect.Request[adminv1.SetTenantTrustRequest]) (*connect.Response[adminv1.SetTenantTrustResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.SetTenantTrustResponse{Trust: r.Msg.GetTrust()}), nil
}

func (f *fakeAdmin) GetTenantTrust(ctx context.Context, r *connect.Request[adminv1.GetTenantTrustRequest]) (*connect.Response[adminv1.GetTenantTrustResponse], error) {
	if err := f.record(ctx, r.Spec(), r.Header(), r.Msg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetTenantTrustResponse{Trust: &adminv1.TenantTrust{}}), nil
}
