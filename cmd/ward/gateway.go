package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/wardhq/ward/client"
)

// newDeviceGatewayCmds are the device subcommands of the MQTT gateway:
// quarantine, release and the connection history.
func newDeviceGatewayCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{
		newDeviceReasonCmd(g, "quarantine", "Restrict a device's network session within a second (state and events only; therapy continues)", true,
			func(c *client.Client, cmd *cobra.Command, ref, why string) (client.Device, error) {
				return c.Quarantine(cmd.Context(), ref, why)
			}),
		newDeviceReleaseCmd(g),
		newDeviceHistoryCmd(g),
	}
}

func newDeviceReleaseCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "release REF",
		Short:   "Lift a device's quarantine",
		Example: "  ward device release PX-000123",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			d, err := c.Release(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.render(cmd, d, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Device %s (%s %s) is now %s.\n", d.ID, d.Manufacturer, d.Serial, d.State)
				return err
			})
		},
	}
}

func newDeviceHistoryCmd(g *globals) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:   "history REF",
		Short: "A device's MQTT connection history, newest first, refused attempts included",
		Long: `A device's MQTT connection history, newest first: when, from where, with
which certificate, TLS and MQTT version and software version, for how long,
and why it ended or was refused (client_close, keepalive_timeout, revoked,
protocol_error, rate_limit, refused_auth, refused_client_id, server_shutdown).`,
		Example: "  ward device history PX-000123 --limit 20",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			items, err := c.History(cmd.Context(), args[0], limit)
			if err != nil {
				return err
			}
			return g.render(cmd, items, func(w io.Writer) error {
				if len(items) == 0 {
					_, err := fmt.Fprintln(w, "No connections recorded.")
					return err
				}
				rows := make([][]string, 0, len(items))
				for _, it := range items {
					dur, reason := "", it.Reason
					if it.DurationMS != nil {
						dur = (time.Duration(*it.DurationMS) * time.Millisecond).Round(time.Second).String()
					}
					if reason == "" {
						reason = "connected"
					}
					mqttv := ""
					if it.MQTTVersion != 0 {
						mqttv = strconv.Itoa(it.MQTTVersion)
					}
					rows = append(rows, []string{when(it.ConnectedAt), dur, reason, it.Detail, it.RemoteAddr, it.Node, mqttv, it.ClientVersion, strconv.Itoa(it.Refusals)})
				}
				return table(w, []string{"CONNECTED", "DURATION", "REASON", "DETAIL", "FROM", "NODE", "MQTT", "SOFTWARE", "REFUSALS"}, rows)
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 0, "most recent connections to show (default 100, at most 1000)")
	return cmd
}

func newGatewayCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "The device MQTT gateway of the node that answers",
	}
	cmd.AddCommand(newGatewayStatusCmd(g))
	return cmd
}

func newGatewayStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Sessions now, and what the gateway refused and stored since the node started",
		Long: `The device gateway of the node that answers --server: its MQTT sessions now,
and, counted since the node started, the connections it refused (by reason),
the messages, subscriptions and attempts it refused (by kind), and the device
messages it stored, refused, and in how many stream records.

A device's own refusals are in "ward device history".`,
		Example: "  ward gateway status\n  ward gateway status -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			st, err := c.GatewayStatus(cmd.Context())
			if err != nil {
				return err
			}
			return g.render(cmd, st, func(w io.Writer) error {
				m := st.Messages
				perRecord := ""
				if m.Records > 0 {
					perRecord = fmt.Sprintf(" (%.1f a record)", float64(m.Stored)/float64(m.Records))
				}
				kv := []string{
					"Node", st.Node,
					"MQTT listener", st.Address,
					"Counting since", when(st.Since) + " UTC",
					"Sessions", strconv.FormatInt(st.Connected, 10),
					"Messages stored", fmt.Sprintf("%d in %d records%s", m.Stored, m.Records, perRecord),
					"Duplicates", strconv.FormatUint(m.Duplicates, 10),
					"Last states written", strconv.FormatUint(m.StateUpdates, 10),
					"Refused messages", fmt.Sprintf("%d invalid payload, %d not the device's topic, %d not stored", m.Invalid, m.Unauthorized, m.StoreFailed),
					"History rows dropped", strconv.FormatInt(st.HistoryDropped, 10),
				}
				kv = append(kv, counts("Refused connections", st.Refused)...)
				kv = append(kv, counts("Violations", st.Violations)...)
				return fields(w, kv...)
			})
		},
	}
}

// counts lists a map of counters as fields under a heading, by name.
func counts(heading string, m map[string]int64) []string {
	var total int64
	for _, v := range m {
		total += v
	}
	kv := []string{heading, strconv.FormatInt(total, 10)}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kv = append(kv, "  "+k, strconv.FormatInt(m[k], 10))
	}
	return kv
}
