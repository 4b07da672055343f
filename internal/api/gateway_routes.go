package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/wardhq/ward/internal/access"
	"github.com/wardhq/ward/internal/gateway"
	"github.com/wardhq/ward/internal/metrics"
)

// Device gateway: live quarantine, the connection history, and the node's
// gateway status.

type quarantineInput struct {
	Ref  string `path:"ref" doc:"Ward id or serial number"`
	Body struct {
		Reason string `json:"reason" minLength:"1" maxLength:"512" doc:"Why, for the audit log and the device record"`
	}
}

type releaseInput struct {
	Ref string `path:"ref" doc:"Ward id or serial number"`
}

type historyInput struct {
	Ref   string `path:"ref" doc:"Ward id or serial number"`
	Limit int    `query:"limit" minimum:"1" maximum:"1000" default:"100" doc:"Most recent connections to return"`
}

type historyOutput struct {
	Body struct {
		Items []gateway.Connection `json:"items"`
	}
}

type gatewayStatusOutput struct {
	Body gateway.Status
}

func (s *server) gatewayRoutes() {
	tags := []string{"devices"}
	register(s, huma.Operation{
		OperationID: "quarantine-device", Metadata: perm(access.DevicesRevoke), Method: http.MethodPost, Path: Prefix + "/devices/{ref}/quarantine",
		Summary:     "Quarantine a device: its session is restricted within a second, on whichever node it is",
		Description: "A quarantined device may still publish its state and events and receive commands (security updates); nothing else. Therapy is never stopped.",
		Tags:        tags,
	}, func(ctx context.Context, in *quarantineInput) (*deviceOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		d, err = s.cfg.Fleet.Quarantine(ctx, actor(ctx), d.ID, in.Body.Reason)
		if err != nil {
			return nil, err
		}
		return &deviceOutput{Body: d}, nil
	})
	register(s, huma.Operation{
		OperationID: "release-device", Metadata: perm(access.DevicesRevoke), Method: http.MethodPost, Path: Prefix + "/devices/{ref}/release",
		Summary: "Release a quarantined device: it is active again", Tags: tags,
	}, func(ctx context.Context, in *releaseInput) (*deviceOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		d, err = s.cfg.Fleet.Release(ctx, actor(ctx), d.ID)
		if err != nil {
			return nil, err
		}
		return &deviceOutput{Body: d}, nil
	})
	register(s, huma.Operation{
		OperationID: "device-history", Metadata: perm(access.DevicesRead), Method: http.MethodGet, Path: Prefix + "/devices/{ref}/history",
		Summary: "A device's connection history, newest first: refused attempts included", Tags: tags,
	}, func(ctx context.Context, in *historyInput) (*historyOutput, error) {
		d, err := s.device(ctx, in.Ref)
		if err != nil {
			return nil, err
		}
		if s.cfg.History == nil {
			return nil, huma.Error503ServiceUnavailable("connection history is not available on this node")
		}
		items, err := s.cfg.History.List(ctx, d.ID, in.Limit)
		if err != nil {
			return nil, err
		}
		out := &historyOutput{}
		out.Body.Items = items
		return out, nil
	})
	register(s, huma.Operation{
		OperationID: "gateway-status", Metadata: perm(access.DevicesRead), Method: http.MethodGet, Path: Prefix + "/gateway",
		Summary:     "This node's device gateway: sessions now, and what it refused and stored since it started",
		Description: "Counters are per node and start at zero when it starts: refused connections by reason, refused messages and subscriptions by kind, device messages stored, refused and in how many stream records.",
		Tags:        []string{"gateway"},
	}, func(ctx context.Context, _ *struct{}) (*gatewayStatusOutput, error) {
		if s.cfg.GatewayStatus == nil {
			return nil, huma.Error503ServiceUnavailable("the device gateway is not running on this node")
		}
		return &gatewayStatusOutput{Body: s.cfg.GatewayStatus()}, nil
	})
	register(s, huma.Operation{
		OperationID: "metrics", Metadata: perm(access.DevicesRead), Method: http.MethodGet, Path: "/metrics",
		Summary:     "This node's metrics, in Prometheus's text format",
		Description: "The device gateway's sessions, refusals and stored messages (the figures of GET /api/v1/gateway, per node, from zero when it starts), Ward's version, and the Go runtime and process. Scrape it with a token that has devices:read.",
		Tags:        []string{"gateway"},
	}, func(ctx context.Context, _ *struct{}) (*metricsOutput, error) {
		if s.cfg.Metrics == nil {
			return nil, huma.Error503ServiceUnavailable("metrics are not available on this node")
		}
		b, err := s.cfg.Metrics()
		if err != nil {
			return nil, err
		}
		return &metricsOutput{ContentType: metrics.ContentType, Body: b}, nil
	})
}

type metricsOutput struct {
	ContentType string `header:"Content-Type"`
	Body        []byte
}
