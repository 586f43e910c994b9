//! An interrupt stops the sampler after the step it arrives in; the next render is unaffected.
//! (Its own test binary: the flag is process-wide.)

use dream_pipeline::interrupt;
use dream_test_support::{euler_request, tiny_model};

#[test]
fn an_interrupt_stops_the_sampler_after_the_current_step() {
    let model = tiny_model();
    let request = euler_request("a red apple", 1, 10, (64, 64));
    let mut steps_seen = Vec::new();
    let result = model.generate(&request, &mut |step| {
        steps_seen.push(step.step);
        if step.step == 2 {
            interrupt::request();
        }
    });
    assert!(result.is_err(), "the sampler went on");
    assert_eq!(steps_seen, [0, 1, 2]);
    // The request stays until taken; then rendering works again.
    assert!(interrupt::take() && !interrupt::is_requested());
    let mut steps = 0;
    model.generate(&request, &mut |_| steps += 1).unwrap();
    assert_eq!(steps, 10);
}
