//! How the `apns-worker` command fails: one message and an exit code per kind of
//! failure (README: "Exit codes").

/// A failure that ends the process, with its exit code (README: "Exit codes").
pub struct Fatal {
    pub code: u8,
    pub message: String,
}

impl Fatal {
    /// Say it once, as the process's logs are written, and give the exit code.
    pub fn report(&self) -> std::process::ExitCode {
        if apns_worker::obs::telemetry::json_logs() {
            // One JSON line, like every other log line of the process.
            tracing::error!(exit_code = self.code, "{}", self.message);
        } else {
            eprintln!("error: {}", self.message);
        }
        std::process::ExitCode::from(self.code)
    }

    /// 1: a runtime failure (the broker unreachable, a publish refused).
    pub fn runtime(e: impl std::fmt::Display) -> Fatal {
        Fatal {
            code: 1,
            message: e.to_string(),
        }
    }
    /// 2: the command line is incomplete (clap uses 2 for its own errors too).
    pub fn usage(e: impl std::fmt::Display) -> Fatal {
        Fatal {
            code: 2,
            message: e.to_string(),
        }
    }
    /// 3: the configuration, an environment variable, or a file it names is wrong.
    pub fn config(e: impl std::fmt::Display) -> Fatal {
        Fatal {
            code: 3,
            message: e.to_string(),
        }
    }
    /// 4: the input (jobs to publish) is invalid; nothing was published.
    pub fn input(e: impl std::fmt::Display) -> Fatal {
        Fatal {
            code: 4,
            message: e.to_string(),
        }
    }

    pub fn run(e: apns_worker::run::RunError) -> Fatal {
        use apns_worker::amqp::AmqpError;
        use apns_worker::run::RunError;
        match &e {
            RunError::Start(_) | RunError::Config(_) | RunError::Admin(_) => Fatal::config(e),
            RunError::Broker(AmqpError::UntrustedBroker(_) | AmqpError::ArgumentsDiffer { .. }) => {
                Fatal::config(e)
            }
            RunError::Broker(_) => Fatal::runtime(e),
        }
    }

    pub fn publish(e: apns_worker::publish::PublishCmdError) -> Fatal {
        use apns_worker::publish::PublishCmdError as P;
        match &e {
            P::Invalid { .. } | P::Read(..) => Fatal::input(e),
            P::NoQueue(_) => Fatal::config(e),
            P::Amqp(
                apns_worker::amqp::AmqpError::Url(_)
                | apns_worker::amqp::AmqpError::UntrustedBroker(_),
            ) => Fatal::config(e),
            _ => Fatal::runtime(e),
        }
    }
}
