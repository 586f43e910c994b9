//! The `dream` binary, driven as a user drives it.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    dream, dream_command, dream_with_input, failed, fixture, png_text, read_rgb, render,
    run_with_input, spawn_piped, succeeded, temp_dir, tiny,
};

#[test]
fn renders_numbered_images_with_their_parameters() {
    let out = temp_dir("render");
    let stdout = succeeded(&render(
        "a red apple",
        &out,
        &[
            "-s", "3", "-S", "42", "-W", "64", "-H", "64", "-C", "7.5", "-A", "ddim", "-n", "2",
        ],
    ));

    let first = out.join("000001.42.png");
    let second = out.join("000002.43.png");
    assert!(first.exists() && second.exists(), "{stdout}");
    // The printed line is the command that makes the image again.
    assert!(
        stdout.contains(&format!(
            "{}: \"a red apple\" -s3 -W64 -H64 -C7.5 -Addim -S42",
            first.display()
        )),
        "{stdout}"
    );
    assert_eq!(
        png_text(&first, "parameters").unwrap(),
        format!("a red apple\nSteps: 3, Sampler: DDIM, Schedule type: Uniform, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny, Version: dream {}", env!("CARGO_PKG_VERSION"))
    );

    // Batch size never changes an image: seed 43 alone gives the second image of the batch.
    let alone = temp_dir("alone");
    succeeded(&render(
        "a red apple",
        &alone,
        &["-s", "3", "-S", "43", "-W", "64", "-H", "64", "-A", "ddim"],
    ));
    assert_eq!(read_rgb(&second), read_rgb(&alone.join("000001.43.png")));
}

/// The A1111 `parameters` of the image `dream x -s STEPS -S 7 -W 64 -H 64 ARGS…` makes, and
/// its printed command.
fn parameters_of(steps: &str, args: &[&str]) -> (String, String) {
    let out = temp_dir(&format!("parameters-{steps}-{}", args.join("-")));
    let mut all = vec!["-s", steps, "-S", "7", "-W", "64", "-H", "64"];
    all.extend_from_slice(args);
    let stdout = succeeded(&render("x", &out, &all));
    (
        png_text(&out.join("000001.7.png"), "parameters").unwrap(),
        stdout,
    )
}

#[test]
fn sampler_names_of_every_tool_choose_sampler_and_schedule() {
    // (the -A value, the A1111 Sampler / Schedule type written to the image)
    let cases = [
        ("k_euler_a", "Euler a, Schedule type: Karras"), // InvokeAI: Karras below --karras_max
        ("DPM++ 2M Karras", "DPM++ 2M, Schedule type: Karras"),
        ("dpmpp_2m", "DPM++ 2M, Schedule type: Uniform"), // ComfyUI's default is "normal"
    ];
    for (name, expected) in cases {
        let (parameters, stdout) = parameters_of("2", &["-A", name]);
        assert!(
            parameters.contains(&format!("Sampler: {expected},")),
            "{name}: {parameters}"
        );
        assert!(
            stdout.contains(&format!(
                "-A{}",
                if name.contains(' ') {
                    format!("{name:?}")
                } else {
                    name.to_string()
                }
            )),
            "{stdout}"
        );
    }
    // Clip skip is recorded as A1111 records it.
    let (parameters, _) = parameters_of("1", &["--clip_skip", "2"]);
    assert!(parameters.contains(", Clip skip: 2, "), "{parameters}");
    // InvokeAI's rule: from --karras_max steps on, the model's own schedule.
    let (parameters, _) = parameters_of("2", &["-A", "k_euler_a", "--karras_max", "2"]);
    assert!(
        parameters.contains("Sampler: Euler a, Schedule type: Uniform,"),
        "{parameters}"
    );
}

#[test]
fn img2img_from_an_init_image() {
    let out = temp_dir("img2img");
    let init = fixture("images/init_64x64.png");
    let stdout = succeeded(&render(
        "a red apple",
        &out,
        &[
            "-s",
            "5",
            "-S",
            "42",
            "-A",
            "ddim",
            "-I",
            init.to_str().unwrap(),
            "-f",
            "0.6",
        ],
    ));
    assert!(stdout.contains(" -f0.6"), "{stdout}");
    let path = out.join("000001.42.png");
    let parameters = png_text(&path, "parameters").unwrap();
    // The size defaults to the init image's; A1111 writes the strength after the model.
    assert!(
        parameters.contains("Size: 64x64, Model: tiny, Denoising strength: 0.6,"),
        "{parameters}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let model = fixture("tiny");
    let model = model.to_str().unwrap();
    let init = fixture("images/init_64x64.png")
        .to_str()
        .unwrap()
        .to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["x", "--model", "/no/such/model.safetensors"],
            "/no/such/model.safetensors",
        ),
        (&["x", "--model", model, "-A", "k_nonsense"], "k_nonsense"),
        (&["x", "--model", model, "--bogus"], "--bogus"),
        (
            &["x", "--model", model, "-W", "65", "-s", "1"],
            "multiples of 8",
        ),
        (
            &["x", "--model", model, "-I", "/no/such/init.png", "-s", "1"],
            "/no/such/init.png",
        ),
        (
            &["x", "--model", model, "-I", &init, "-f", "1.5", "-s", "1"],
            "strength must be between 0 and 1, got 1.5",
        ),
    ];
    for (args, needle) in cases {
        let stderr = failed(&dream(args));
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn words_past_the_first_75_tokens_still_count() {
    // Long prompts are encoded in 75-token chunks (A1111), not cut at 77: changing only the
    // last word of a 76-token prompt changes the image.
    let image = |last_word: &str| {
        let out = temp_dir(&format!("long-{last_word}"));
        let prompt = format!("{} {last_word}", "apple ".repeat(75));
        succeeded(&render(
            &prompt,
            &out,
            &["-s", "1", "-S", "1", "-W", "64", "-H", "64", "-A", "ddim"],
        ));
        std::fs::read(out.join("000001.1.png")).unwrap()
    };
    assert_ne!(image("zebra"), image("giraffe"));
}

#[test]
fn info_prints_the_parameters_of_images_from_any_tool() {
    let out = temp_dir("info");
    succeeded(&render(
        "a cat, (sitting:1.2)",
        &out,
        &[
            "-s",
            "2",
            "-S",
            "5",
            "-W",
            "64",
            "-H",
            "64",
            "-A",
            "DPM++ 2M Karras",
        ],
    ));
    let ours = out.join("000001.5.png");
    let stdout = succeeded(&dream(&["info", ours.to_str().unwrap()]));
    assert!(
        stdout
            .contains("a cat, (sitting:1.2)\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras,"),
        "{stdout}"
    );
    assert!(stdout.contains("Seed: 5, Size: 64x64"), "{stdout}");

    // A PNG without parameters, and a file that is not a PNG.
    let plain = fixture("images/init_64x64.png");
    let output = dream(&["info", plain.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("no generation parameters"));
    let not_png = fixture("tiny/model_index.json");
    let stderr = failed(&dream(&["info", not_png.to_str().unwrap()]));
    assert!(stderr.contains("model_index.json"), "{stderr}");
}

/// Runs an `invoke>` session of `dream --model <fixtures/tiny> -o OUT ARGS…` reading `input`.
fn session(out: &Path, args: &[&str], input: &str) -> Output {
    run_with_input(tiny(&[], out).args(args), input)
}

#[test]
fn the_repl_keeps_going_after_bad_lines_and_reuses_seeds() {
    let out = temp_dir("repl");
    // Startup switches are every line's defaults.
    let input = "a red apple -S 42 -A ddim\n\
                 -h\n\
                 x --bogus\n\
                 \"a red apple\" -A ddim -S -1\n\
                 !history\n\
                 !nonesuch\n\
                 !search bogus\n\
                 !3\n\
                 !clear\n\
                 !history\n";
    let output = session(&out, &["-s", "2", "-W", "64", "-H", "64"], input);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Each bad line gets a one-line error and the next line still runs.
    assert!(
        stderr.contains("error: unexpected argument '--bogus' found\n"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command !nonesuch"), "{stderr}");
    assert!(
        stdout.contains("Usage: invoke> PROMPT [switches]"),
        "{stdout}"
    );
    assert!(
        !output.status.success(),
        "a failed line shows in the exit code"
    );
    // -S -1 is the previous image's seed: the same image again.
    let (first, again) = (out.join("000001.42.png"), out.join("000002.42.png"));
    assert!(first.exists() && again.exists(), "{stdout}\n{stderr}");
    assert_eq!(read_rgb(&first), read_rgb(&again));
    // !history, then !search, then !3 (printed: no terminal to edit it in); after !clear
    // the last !history prints nothing.
    assert!(
        stdout.ends_with(
            "[1] a red apple -S 42 -A ddim\n[2] x --bogus\n[3] \"a red apple\" -A ddim -S -1\n\
             [2] x --bogus\n\"a red apple\" -A ddim -S -1\n"
        ),
        "{stdout}"
    );
}

#[test]
fn fetched_commands_make_the_same_images_again() {
    let out = temp_dir("fetch");
    // Karras (k_euler_a below --karras_max), an A1111 name, clip skip.
    let input = format!(
        "a red apple -s 3 -W 64 -H 64 -S 42 -A k_euler_a\n\
         a cat, (sitting:1.2) -s 2 -W 64 -H 64 -S 7 -A \"DPM++ 2M\" -C 5 --clip_skip 2\n\
         !fetch {}/*.png {}/commands.txt\n",
        out.display(),
        out.display()
    );
    succeeded(&session(&out, &[], &input));
    let commands = std::fs::read_to_string(out.join("commands.txt")).unwrap();
    assert_eq!(commands.lines().count(), 2, "{commands}");

    // !replay of the fetched commands in a new session makes the same pixels.
    let again = temp_dir("fetch-again");
    let replay = format!("!replay {}\n", out.join("commands.txt").display());
    succeeded(&session(&again, &[], &replay));
    for name in ["000001.42.png", "000002.7.png"] {
        assert_eq!(
            read_rgb(&out.join(name)),
            read_rgb(&again.join(name)),
            "{name}: {commands}"
        );
    }
    // !fetch of one image offers its command (printed when not on a terminal).
    let model = fixture("tiny");
    let output = dream_with_input(
        &["--model", model.to_str().unwrap()],
        &format!("!fetch {}\n", out.join("000002.7.png").display()),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        "\"a cat, (sitting:1.2)\" -s 2 -S 7 -W 64 -H 64 -C 5 -A k_dpmpp_2 --clip_skip 2"
    );
}

#[test]
fn models_come_from_the_registry_by_name() {
    let root = temp_dir("registry");
    let registry = root.join("configs/models.yaml");
    let registry = registry.to_str().unwrap();
    let model = fixture("tiny");
    let out = root.join("out");
    // Without a model, dream says how to get one.
    let stderr = failed(&dream(&["x", "--config", registry]));
    assert!(
        stderr.contains("no model to render with") && stderr.contains("--model"),
        "{stderr}"
    );
    let input = format!(
        "!import_model {} tiny1\n!edit_model tiny1 width=64 height=64 \"description=a tiny model\"\n!models\n",
        model.display()
    );
    let stdout = succeeded(&dream_with_input(&["--config", registry], &input));
    assert!(
        stdout.contains("tiny1") && stdout.contains("a tiny model"),
        "{stdout}"
    );
    let yaml = std::fs::read_to_string(registry).unwrap();
    assert!(
        yaml.contains("tiny1:\n") && yaml.contains("width: 64") && yaml.contains("default: true"),
        "{yaml}"
    );

    // The registry's default model and its size, with no --model, -W or -H.
    succeeded(&dream(&[
        "x",
        "--config",
        registry,
        "-s",
        "1",
        "-S",
        "3",
        "-o",
        out.to_str().unwrap(),
    ]));
    let parameters = png_text(&out.join("000001.3.png"), "parameters").unwrap();
    assert!(
        parameters.contains("Size: 64x64, Model: tiny,"),
        "{parameters}"
    );

    // !switch to an unknown model fails; the session goes on and can delete the model.
    let output = dream_with_input(
        &["--config", registry, "--model", "tiny1"],
        "!switch nonesuch\n!del_model tiny1\n!models\n",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nonesuch: no such file or folder, nor a model in"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("no models in"));
}

#[test]
fn unbuilt_switches_are_refused_before_the_model_loads() {
    let out = temp_dir("unbuilt");
    let cases: &[(&[&str], &str)] = &[
        (
            &["-G", "0.5"],
            "-G/--facetool_strength is not supported yet",
        ),
        (
            &["-ft", "codeformer"],
            "-ft/--facetool is not supported yet",
        ),
        (&["--web"], "--web is not supported yet"),
    ];
    for (args, message) in cases {
        let stderr = failed(&render("x", &out, args));
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("loading"), "{args:?}: {stderr}");
    }
}

/// float16 runs on the CPU as well (dream-pipeline's tests/precision.rs holds it against
/// diffusers); --free_gpu_mem is taken and said to change nothing without a GPU.
#[test]
fn precision_and_free_gpu_mem_on_the_cpu() {
    let out = temp_dir("precision");
    let run = |extra: &[&str]| {
        let mut args = vec!["-s", "2", "-W", "64", "-H", "64", "-A", "ddim", "-S", "5"];
        args.extend_from_slice(extra);
        render("a red apple", &out, &args)
    };
    succeeded(&run(&["--fnformat", "full.png"]));
    let half = run(&[
        "--precision",
        "float16",
        "--free_gpu_mem",
        "--fnformat",
        "half.png",
    ]);
    succeeded(&half);
    let stderr = String::from_utf8_lossy(&half.stderr);
    assert!(
        stderr.contains("--free_gpu_mem has no effect without a GPU"),
        "{stderr}"
    );
    // The same picture to within float16's rounding, a few levels of 255 at most.
    let (full, half) = (
        read_rgb(&out.join("full.png")),
        read_rgb(&out.join("half.png")),
    );
    let largest = full
        .pixels
        .iter()
        .zip(&half.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(largest.is_some_and(|d| d <= 4), "{largest:?}");
    let stderr = failed(&run(&["--precision", "half"]));
    assert!(stderr.contains("unknown precision \"half\""), "{stderr}");
}

#[test]
fn grids_file_name_templates_and_the_prompt_log() {
    let out = temp_dir("outputs");
    let run = |extra: &[&str]| {
        let mut args = vec!["-s", "1", "-W", "64", "-H", "64", "-A", "ddim"];
        args.extend_from_slice(extra);
        render("a red apple", &out, &args)
    };
    // Three images in one grid: InvokeAI's layout is one row of three.
    succeeded(&run(&["-S", "10", "-n", "3", "-g"]));
    let grid = read_rgb(&out.join("000001.10.png"));
    assert_eq!((grid.width, grid.height), (192, 64));
    // Its middle cell is seed 11's image.
    succeeded(&run(&[
        "-S",
        "11",
        "--fnformat",
        "{seed}-{steps}-{sampler}.png",
    ]));
    let alone = read_rgb(&out.join("11-1-ddim.png")).pixels;
    for y in 0..64 {
        let row = &grid.pixels[y * 192 * 3..(y + 1) * 192 * 3];
        assert_eq!(&row[64 * 3..128 * 3], &alone[y * 64 * 3..(y + 1) * 64 * 3]);
    }
    // A template without {prefix} never overwrites; an unknown wildcard is refused up front.
    let output = run(&["-S", "11", "--fnformat", "{seed}-{steps}-{sampler}.png"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("exists already"));
    let output = run(&["-S", "11", "--fnformat", "{colour}.png"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown wildcard {colour}"));
    // InvokeAI's logs: path and command, and the markdown with each image.
    let log = std::fs::read_to_string(out.join("invoke_log.md")).unwrap();
    assert!(
        log.starts_with(
            "## 000001.10.png\n![](000001.10.png)\n\n\"a red apple\" -s1 -W64 -H64 -C7.5 -Addim -S10 -g -n3\n## 11-1-ddim.png\n"
        ),
        "{log}"
    );
    let log = std::fs::read_to_string(out.join("invoke_log.txt")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
}

#[test]
fn ctrl_c_stops_the_image_being_made_and_keeps_the_finished_ones() {
    use std::io::Write;
    let out = temp_dir("interrupt");
    let mut child = spawn_piped(tiny(&[], &out).args(["-W", "64", "-H", "64", "-A", "ddim"]));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"x -s 20 -S 100 -n 500\n").unwrap();
    stdin.flush().unwrap();
    let first = out.join("000001.100.png");
    let started = std::time::Instant::now();
    while !first.exists() {
        assert!(started.elapsed().as_secs() < 120, "no image came");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill only sends a signal to our child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    // The prompt is back: the next line runs.
    stdin.write_all(b"y -s 1 -S 7\n").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted after "), "{stderr}");
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let batch = names
        .iter()
        .filter(|n| n.ends_with(".png") && !n.ends_with(".7.png"))
        .count();
    assert!((1..500).contains(&batch), "{batch} images of the batch");
    assert!(names.iter().any(|n| n.ends_with(".7.png")), "{names:?}");
}

#[test]
fn images_record_the_sha256_of_the_weights() {
    use sha2::{Digest, Sha256};
    let out = temp_dir("hash");
    let weights = fixture("tiny.safetensors");
    let sha256: String = Sha256::digest(std::fs::read(&weights).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = fixture("tiny");
    succeeded(
        &dream_command()
            .args(["x", "--model", weights.to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(["-s", "1", "-S", "1", "-W", "64", "-H", "64"])
            .args(["-o", out.to_str().unwrap()])
            .env("XDG_CACHE_HOME", out.join("cache"))
            .output()
            .unwrap(),
    );
    let image = out.join("000001.1.png");
    // A1111: the first 10 hex digits, before the model name; InvokeAI: all of them.
    let parameters = png_text(&image, "parameters").unwrap();
    assert!(
        parameters.contains(&format!("Model hash: {}, Model: tiny,", &sha256[..10])),
        "{parameters}"
    );
    let sd_metadata = png_text(&image, "sd-metadata").unwrap();
    assert!(
        sd_metadata.contains(&format!("\"model_hash\":\"{sha256}\"")),
        "{sd_metadata}"
    );
    // The hash is remembered for the next run.
    let cache = std::fs::read_to_string(out.join("cache/dream/model_hashes.json")).unwrap();
    assert!(cache.contains(&sha256), "{cache}");
}

/// A stand-in for the Hugging Face hub serving `fixtures/tiny` as the repository `test/tiny`
/// (with a `.bin` listed that it cannot serve: Dream must not ask for it). Returns its address
/// and the paths it was asked for.
fn fake_hub() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let root = fixture("tiny");
    let mut files = Vec::new();
    for component in std::fs::read_dir(&root).unwrap() {
        let path = component.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().file_name().to_string_lossy().to_string();
                files.push(format!("{name}/{file}"));
            }
        } else {
            files.push(name);
        }
    }
    files.push("unet/diffusion_pytorch_model.bin".into());
    let siblings: Vec<String> = files
        .iter()
        .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
        .collect();
    let info = format!("{{\"siblings\":[{}]}}", siblings.join(","));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            let path = request.split(' ').nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let body = if path == "/api/models/test/tiny/revision/main" {
                Some(info.clone().into_bytes())
            } else {
                path.strip_prefix("/test/tiny/resolve/main/")
                    .and_then(|file| std::fs::read(root.join(file)).ok())
            };
            let (status, body) = match body {
                Some(body) => ("200 OK", body),
                None => ("404 Not Found", b"not found".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (address, asked)
}

#[test]
fn hub_models_are_fetched_once_and_render_as_the_local_folder() {
    let root = temp_dir("hub");
    let (endpoint, asked) = fake_hub();
    let dream_env = |args: &[&str]| {
        dream_command()
            .args(args)
            .env("HF_ENDPOINT", &endpoint)
            .env("XDG_CACHE_HOME", root.join("cache"))
            .output()
            .unwrap()
    };
    succeeded(&dream_env(&["preload", "hf:test/tiny"]));
    let fetched = asked.lock().unwrap().clone();
    assert!(
        fetched
            .contains(&"/test/tiny/resolve/main/unet/diffusion_pytorch_model.safetensors".into())
            && !fetched.iter().any(|p| p.ends_with(".bin")),
        "{fetched:?}"
    );
    // Rendering from the fetched copy asks the hub nothing and equals the local folder's image.
    let image = |model: &[&str], out: &str| {
        let out = root.join(out);
        let mut args = vec!["a red apple", "-s", "2", "-W", "64", "-H", "64", "-S", "3"];
        args.extend_from_slice(&["-A", "ddim", "-o", out.to_str().unwrap()]);
        args.extend_from_slice(model);
        succeeded(&dream_env(&args));
        read_rgb(&out.join("000001.3.png"))
    };
    let local = fixture("tiny");
    let local = ["--model", local.to_str().unwrap()];
    assert_eq!(
        image(&["--model", "hf:test/tiny"], "hub"),
        image(&local, "local")
    );
    assert_eq!(asked.lock().unwrap().len(), fetched.len());
    // A registry entry with a repo_id (InvokeAI 2.3's hub entries) renders from the same copy.
    let registry = root.join("configs/models.yaml");
    let registry = registry.to_str().unwrap();
    succeeded(&dream_with_input(
        &["--config", registry],
        "!import_model hf:test/tiny\n",
    ));
    let yaml = std::fs::read_to_string(registry).unwrap();
    assert!(
        yaml.contains("tiny:\n") && yaml.contains("repo_id: test/tiny"),
        "{yaml}"
    );
    assert_eq!(
        image(&["--config", registry, "--model", "tiny"], "by-name"),
        image(&local, "local2")
    );
    assert_eq!(asked.lock().unwrap().len(), fetched.len());
    // A repository the hub does not have: a clear error.
    let stderr = failed(&dream_env(&["x", "--model", "hf:test/nonesuch"]));
    assert!(
        stderr.contains("/api/models/test/nonesuch/revision/main"),
        "{stderr}"
    );
}

#[test]
fn prompts_come_from_a_file_or_standard_input_until_q() {
    let out = temp_dir("from-file");
    let commands = out.join("commands.txt");
    std::fs::write(
        &commands,
        "# a comment\na red apple -S 1\n\n\"a green pear\" -S 2\nq\na plum -S 3\n",
    )
    .unwrap();
    let switches = ["-s", "1", "-W", "64", "-H", "64"];
    let file_out = out.join("file");
    let stdout = succeeded(
        &tiny(&[], &file_out)
            .args(switches)
            .arg("--from_file")
            .arg(&commands)
            .output()
            .unwrap(),
    );
    assert!(stdout.contains("\"a green pear\" -s1"), "{stdout}");
    assert!(file_out.join("000002.2.png").exists());
    assert!(
        !file_out.join("000003.3.png").exists(),
        "q ends the commands"
    );
    // `dream -` reads standard input.
    let stdin_out = out.join("stdin");
    succeeded(&run_with_input(
        tiny(&["-"], &stdin_out).args(switches),
        "a plum -S 3\n",
    ));
    assert!(stdin_out.join("000001.3.png").exists());
}

#[test]
fn switching_back_to_a_cached_model_does_not_load_it_again() {
    let root = temp_dir("lru");
    let registry = root.join("models.yaml");
    let registry = registry.to_str().unwrap();
    let model = fixture("tiny");
    let setup = format!(
        "!import_model {0} a\n!import_model {0} b\n",
        model.display()
    );
    succeeded(&dream_with_input(&["--config", registry], &setup));
    let loads = |max: &str| {
        let output = dream_with_input(
            &["--config", registry, "--max_loaded_models", max],
            "!switch a\n!switch b\n!switch a\n!models\n",
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        (stderr.matches(">> loading").count(), stdout)
    };
    let (two, listing) = loads("2");
    assert_eq!(two, 2);
    assert!(
        listing.contains("a                        active")
            && listing.contains("b                        cached"),
        "{listing}"
    );
    assert_eq!(loads("1").0, 3);
}

#[test]
fn the_previous_images_seed_and_picture_can_be_reused() {
    let out = temp_dir("previous");
    // -S -2 is the first of the previous command's two images; -I -1 its last image.
    let input = "a cat -S 10 -n 2\n\
                 a cat -S -2\n\
                 a dog -I -1 -f 0.5 -S 5\n\
                 a dog -S -3\n";
    let output = session(
        &out,
        &["-s", "2", "-W", "64", "-H", "64", "-A", "ddim"],
        input,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("-S -3: the previous command made 1 image(s)"),
        "{stderr}"
    );
    assert_eq!(
        read_rgb(&out.join("000001.10.png")),
        read_rgb(&out.join("000003.10.png"))
    );
    let previous = out.join("000003.10.png");
    assert!(
        stdout.contains(&format!(
            "000004.5.png: \"a dog\" -s2 -W64 -H64 -C7.5 -Addim -S5 -I{} -f0.5",
            previous.display()
        )),
        "{stdout}"
    );
}
