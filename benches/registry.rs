//! Registry load measurements; see docs/PERFORMANCE.md. (Being written.)

fn main() {
    println!("registry benchmark: not written yet");
}
