package worker

import (
	"context"

	"github.com/downpour-ml/downpour/models"
	"github.com/downpour-ml/downpour/paramserver"
)

// inFlight is a step's push and the next step's pull, moving in the
// background (a paramserver.Transfer) while the next forward pass starts
// on the parameters already pulled: the model's hooks wait on it for each
// part of the parameters as the pass reaches it. Both trainers embed one.
type inFlight struct {
	xfer  *paramserver.Transfer // nil when nothing is in flight
	xstop context.CancelFunc
	xerr  error // the first error the model's hooks met waiting on xfer
}

// hooks are the model's hooks that wait on the transfer in flight: for the
// parameters a layer reads, and for the push to have read the gradients
// before the backward pass overwrites them.
func (f *inFlight) hooks() *models.Hooks {
	return &models.Hooks{
		NeedParams: func(lo, hi int) {
			if f.xfer != nil && f.xerr == nil {
				f.xerr = f.xfer.WaitRange(lo, hi)
			}
		},
		GradsFree: func() {
			if f.xfer != nil && f.xerr == nil {
				f.xerr = f.xfer.WaitPushed()
			}
		},
	}
}

// settle waits for the transfer in flight, if any, and forgets it.
func (f *inFlight) settle() error {
	if f.xfer == nil {
		return nil
	}
	err := f.xfer.Wait()
	if f.xerr != nil {
		err = f.xerr
	}
	f.xstop()
	f.xfer, f.xstop, f.xerr = nil, nil, nil
	return err
}

// abort stops a transfer still in flight (when the step loop ends early).
func (f *inFlight) abort() {
	if f.xfer != nil {
		f.xstop()
		f.xfer.Wait()
		f.xfer, f.xstop, f.xerr = nil, nil, nil
	}
}
